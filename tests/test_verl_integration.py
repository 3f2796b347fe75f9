"""bnpo inside real verl 0.9.1 without Ray: plugin loading, Hydra config, legacy trainer functions."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import yaml
from batches import grouped, outcome_batch, scalar
from omegaconf import OmegaConf
from oracle import reference_ad_bnpo, reference_advantages
from verl_helpers import legacy_batch, run_python, verl_config

import verl.trainer.ppo.ray_trainer as ray_trainer
from bnpo.core.config import KEYS, parse_bnpo_block
from bnpo.verl import estimator_scope
from bnpo.verl.algo_config import BNPOAlgoConfig
from bnpo.verl.startup import check_run_config
from verl.trainer.config import AlgoConfig
from verl.utils.config import omega_conf_to_dataclass

AD_BNPO = ("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")


def test_fresh_process_that_imports_verl_has_everything():
    probe = textwrap.dedent(
        """
        import verl
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R
        print("estimators", R["bnpo"].__module__, R["ad_bnpo"].__module__)
        import verl.utils.config
        print("startup_check", getattr(verl.utils.config.validate_config, "_bnpo_wrapped", False))
        from verl.trainer.ppo.v1 import get_trainer_cls
        modes = ("sync", "colocate_async", "separate_async")
        print("v1", all(getattr(get_trainer_cls(m)._compute_advantage, "_bnpo_wrapped", False) for m in modes))
        import verl.trainer.ppo.ray_trainer as rt
        print("legacy", getattr(rt.compute_advantage, "_bnpo_wrapped", False))
        """
    )
    out = run_python("-c", probe)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["estimators"] == "bnpo.verl.estimators bnpo.verl.estimators"
    assert lines["startup_check"] == "True"
    assert lines["v1"] == "True"
    assert lines["legacy"] == "True"
    assert "bnpo: the verl plugin failed" not in out.stderr


def test_a_broken_plugin_is_loud_and_a_bnpo_run_stops_at_startup(tmp_path):
    # Another plugin claiming the name "bnpo" first (loaded before entry points) makes our registration fail.
    (tmp_path / "clash_mod.py").write_text(
        "from verl.trainer.ppo.core_algos import register_adv_est\n"
        "@register_adv_est('bnpo')\ndef other(**kwargs):\n    raise AssertionError('must not run')\n"
    )
    env = {"VERL_USE_EXTERNAL_MODULES": "clash_mod", "PYTHONPATH": str(tmp_path)}
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=bnpo", env=env)
    assert out.returncode != 0
    assert "bnpo: the verl plugin failed" in out.stderr  # at import, in every process
    assert "algorithm.adv_estimator=bnpo was requested but it is registered to clash_mod.other" in out.stderr
    assert "ray init kwargs" not in out.stdout  # stopped before Ray started


def test_main_ppo_composes_a_bnpo_job():
    keys = [
        "algorithm.adv_estimator=ad_bnpo",
        "+algorithm.bnpo.reward_min=-1", "+algorithm.bnpo.reward_max=2", "+algorithm.bnpo.fixed_alpha=1.5",
        "+algorithm.bnpo.fixed_beta=1.25", "+algorithm.bnpo.max_weight=1000",
        "+algorithm.bnpo.components=[acc,format]", "+algorithm.bnpo.component_weights=[2,1]",
    ]
    out = run_python("-m", "verl.trainer.main_ppo", *keys, "--cfg", "job")
    assert out.returncode == 0, out.stderr[-3000:]
    job = yaml.safe_load(out.stdout)
    assert job["trainer"]["v1"]["trainer_mode"] == "sync"  # verl's own default: bnpo needs no trainer flag
    cfg = parse_bnpo_block(job["algorithm"]["bnpo"])
    assert (cfg.reward_min, cfg.reward_max, cfg.fixed_alpha, cfg.fixed_beta, cfg.max_weight) == (-1, 2, 1.5, 1.25, 1000)
    assert cfg.components == ("acc", "format") and cfg.component_weights == (2.0, 1.0)


def test_main_ppo_stops_at_startup_on_a_bnpo_typo():
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_mx=2")
    assert out.returncode != 0
    assert "algorithm.bnpo.reward_mx" in out.stderr and "algorithm.bnpo.reward_max" in out.stderr
    assert "ray init kwargs" not in out.stdout


def test_every_key_through_hydra():
    values = {"reward_min": -1, "reward_max": 3, "fixed_alpha": 2, "fixed_beta": 1.5, "max_weight": 50,
              "components": "[acc,format,len]", "component_weights": "[1,2,3]",
              "baseline": "eb_loo"}
    assert set(values) == set(KEYS)
    config = verl_config("algorithm.adv_estimator=ad_bnpo", *(f"+algorithm.bnpo.{k}={v}" for k, v in values.items()))
    cfg = check_run_config(config)
    assert (cfg.reward_min, cfg.reward_max, cfg.fixed_alpha, cfg.fixed_beta, cfg.max_weight) == (-1, 3, 2, 1.5, 50)
    assert cfg.components == ("acc", "format", "len") and cfg.component_weights == (1, 2, 3)
    assert cfg.baseline == "eb_loo"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.rewardmax=2"), r"algorithm\.bnpo\.rewardmax"),
        (("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.fixed_alpha=2"), r"algorithm\.bnpo\.fixed_beta"),
        (("algorithm.adv_estimator=ad_bnpo",), r"algorithm\.bnpo\.components"),
        (("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.components=[acc]"),
         r"algorithm\.bnpo\.components=\['acc'\] is set, but only ad_bnpo reads it"),
        (("algorithm.adv_estimator=bnpo", "algorithm.use_kl_in_reward=True"),
         r"algorithm\.use_kl_in_reward=True .* actor_rollout_ref\.actor\.use_kl_loss=True"),
        (("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc]", "algorithm.use_kl_in_reward=True"),
         r"algorithm\.use_kl_in_reward=True with algorithm\.adv_estimator=ad_bnpo"),
        (("algorithm.adv_estimator=ad_bnpo", '+algorithm.bnpo.components="acc,format"'), r"is a string"),
        (("algorithm.adv_estimator=bnpo", "reward.custom_reward_function.path=pkg://bnpo.rewards",
          "+reward.custom_reward_function.reward_kwargs.format_reward=true"), r"acc \+ format, in \[0, 2\].*reward_max=2"),
    ],
)
def test_startup_check_names_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_run_config(verl_config(*overrides))


def test_startup_check_accepts_the_format_reward_with_its_range():
    reward = ("reward.custom_reward_function.path=pkg://bnpo.rewards",
              "+reward.custom_reward_function.reward_kwargs.format_reward=true")
    assert check_run_config(verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2", *reward))
    assert check_run_config(verl_config("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]",
                                        *reward))


def test_startup_check_accepts_every_trainer_mode_and_leaves_other_estimators_alone():
    assert check_run_config(verl_config("algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=True")) is None
    for mode in ("trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode=colocate_async",
                 "trainer.v1.trainer_mode=separate_async", "trainer.use_v1=False"):
        config = verl_config("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc]", mode)
        assert check_run_config(config).components == ("acc",)


def test_main_ppo_stops_at_startup_on_kl_in_reward():
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=bnpo", "algorithm.use_kl_in_reward=True")
    assert out.returncode != 0
    assert "algorithm.use_kl_in_reward=True with algorithm.adv_estimator=bnpo" in out.stderr
    assert "ray init kwargs" not in out.stdout


def test_algo_dataclass_needs_bnpo_algo_config():
    """verl 0.9.1 hands config.algorithm to the estimators as a DictConfig, where the block lives as is;
    converting it to verl's AlgoConfig rejects the extra key, BNPOAlgoConfig keeps it."""
    algorithm = verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2").algorithm
    with pytest.raises(Exception, match="bnpo"):
        omega_conf_to_dataclass(algorithm)
    algorithm = verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2",
                            "algorithm._target_=bnpo.verl.algo_config.BNPOAlgoConfig").algorithm
    converted = omega_conf_to_dataclass(algorithm)
    assert isinstance(converted, AlgoConfig) and isinstance(converted, BNPOAlgoConfig)
    trl, mask, index = outcome_batch([0.0, 2.0, 2.0, 2.0], ["a", "a", "b", "b"])
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    with estimator_scope() as scope:
        get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, index=index, config=converted)
    assert scope.stats.num_questions == 2  # reward_max=2 was applied: 2.0 is inside the range


def test_legacy_compute_advantage_bnpo_numbers_and_metrics():
    rewards, uids = grouped([0.25, 0.5, 0.625, 0.875], group_size=8)
    rewards = [2 * r for r in rewards]
    algorithm = verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2").algorithm
    with estimator_scope():  # what RayPPOTrainer.fit opens for its steps
        data = ray_trainer.compute_advantage(legacy_batch(rewards, uids), adv_estimator="bnpo", config=algorithm)
        metrics = ray_trainer.compute_data_metrics(batch=data, use_critic=False)
        stale = ray_trainer.compute_data_metrics(batch=data, use_critic=False)
    expected, fit = reference_advantages(rewards, uids, reward_max=2.0)
    mask = data.batch["response_mask"]
    got = scalar(data.batch["advantages"], mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    for name in ("mu", "var", "a", "b", "alpha", "beta", "num_questions", "num_degenerate", "weight_max", "clamped_frac"):
        assert f"bnpo/{name}" in metrics
    assert metrics["bnpo/alpha"] == pytest.approx(fit["alpha"]) and metrics["bnpo/num_questions"] == 4
    assert "bnpo/alpha" not in stale  # a step's statistics are logged once


def test_legacy_compute_advantage_ad_bnpo_gets_the_reward_components():
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    fmt = [float(x) for x in np.random.default_rng(1).integers(0, 2, size=len(acc))]
    algorithm = verl_config(*AD_BNPO).algorithm
    batch = legacy_batch(acc, uids, acc=np.array(acc, dtype=object), format=np.array(fmt), score=np.array(acc))
    with estimator_scope():
        data = ray_trainer.compute_advantage(batch, adv_estimator="ad_bnpo", config=algorithm)
        metrics = ray_trainer.compute_data_metrics(batch=data, use_critic=False)
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    mask = data.batch["response_mask"]
    got = scalar(data.batch["advantages"], mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert {"bnpo/acc/alpha", "bnpo/format/alpha", "bnpo/num_questions"} <= set(metrics)


def test_legacy_missing_component_lists_the_available_keys():
    acc, uids = grouped([0.25, 0.5], group_size=4)
    batch = legacy_batch(acc, uids, acc=np.array(acc), score=np.array(acc))
    with pytest.raises(ValueError, match=r"'format'.*\['acc', 'score', 'uid'\]"):
        ray_trainer.compute_advantage(batch, adv_estimator="ad_bnpo", config=verl_config(*AD_BNPO).algorithm)


def test_legacy_fit_calls_the_wrapped_functions():
    # RayPPOTrainer.fit (verl's, inside bnpo's scope) looks both up as module globals, so the wrapped ones are
    # what every step uses.
    names = ray_trainer.RayPPOTrainer.fit.__wrapped__.__code__.co_names
    assert "compute_advantage" in names and "compute_data_metrics" in names
    assert ray_trainer.compute_advantage._bnpo_wrapped


def test_other_estimators_pass_through_unchanged():
    rewards, uids = grouped([0.25, 0.5], group_size=4)
    algorithm = verl_config("algorithm.adv_estimator=grpo").algorithm
    data = ray_trainer.compute_advantage(legacy_batch(rewards, uids), adv_estimator="rloo", config=algorithm)
    assert "bnpo/alpha" not in ray_trainer.compute_data_metrics(batch=data, use_critic=False)
    assert torch.isfinite(data.batch["advantages"]).all()


def _dataclass_failures(config) -> dict[str, str]:
    """Every section with a ``_target_`` that verl's ``omega_conf_to_dataclass`` cannot build: path -> error type.

    Model sections (HFModelConfig) are skipped: building one reads the model from the hub or disk, which verl
    does in its workers only.
    """
    failures = {}

    def walk(node, path):
        if not OmegaConf.is_dict(node):
            return
        if "_target_" in node and not str(node._target_).endswith("HFModelConfig"):
            try:
                omega_conf_to_dataclass(node)
            except Exception as err:  # noqa: BLE001  (collected and compared, not hidden)
                failures[path] = type(err).__name__
        for key in node:
            walk(node._get_node(key)._dereference_node() if OmegaConf.is_dict(node._get_node(key)) else None,
                 f"{path}.{key}".lstrip("."))

    walk(config, "")
    return failures


def test_recipe_config_builds_through_verls_dataclasses():
    from hydra import compose, initialize_config_dir
    from verl_helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "bnpo" / "recipe"), version_base=None):
        recipe = compose("bnpo_trainer")
    algorithm = omega_conf_to_dataclass(recipe.algorithm)
    assert isinstance(algorithm, BNPOAlgoConfig) and algorithm.adv_estimator == "bnpo"
    assert parse_bnpo_block(algorithm.bnpo) == parse_bnpo_block(recipe.algorithm.bnpo)
    actor = omega_conf_to_dataclass(recipe.actor_rollout_ref.actor)
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.28, "seq-mean-token-sum")
    assert omega_conf_to_dataclass(recipe.actor_rollout_ref.rollout).n == 16
    # every section verl's own default config can build, the recipe's can build too
    stock = _dataclass_failures(verl_config())
    assert set(_dataclass_failures(recipe)) <= set(stock), _dataclass_failures(recipe)
    with pytest.raises(Exception, match="algorithm.bnpo.max_wieght"):  # the block is validated when built
        omega_conf_to_dataclass(OmegaConf.merge(recipe.algorithm, {"bnpo": {"max_wieght": 2}}))
