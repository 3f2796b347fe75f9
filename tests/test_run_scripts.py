"""The run scripts in DRY_RUN mode: the composed Hydra config (verl's real main_ppo + the recipe)
holds the paper's settings (recipe/bnpo/README.md), env vars and extra overrides reach it, bad combinations stop
early. Runs on CPU with no GPU, model or data."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf
import pytest
import torch

from recipe_helpers import HOME, ROOT, composed, dry_run, run_script, script_env

from bnpo.verl.preflight import stack

RUN_SCRIPTS = {
    "scripts/run_qwen_math_7b.sh": "Qwen/Qwen2.5-Math-7B",
    "scripts/run_qwen_math_1_5b.sh": "Qwen/Qwen2.5-Math-1.5B",
}


def _leaves(tree, prefix: str = "") -> dict:
    """{dotted key: value} of a nested config."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


@pytest.fixture(scope="module", params=sorted(RUN_SCRIPTS))
def paper_config(request):
    return request.param, composed(request.param)


def test_both_scripts_run_the_same_recipe_on_their_model(paper_config):
    """The paper's settings are checked once, in the parity table (tests/test_parity.py, on the 7B script); the
    1.5B script differs from it only in the model and the names derived from it."""
    script, cfg = paper_config
    assert cfg.actor_rollout_ref.model.path == RUN_SCRIPTS[script]
    seven, mine = (_leaves(OmegaConf.to_container(c, resolve=True)) for c in (composed("scripts/run_qwen_math_7b.sh"), cfg))
    assert seven.keys() == mine.keys()
    differ = {key: (seven[key], mine[key]) for key in seven if seven[key] != mine[key]}
    # only the model path and the values derived from it and from the run's name (qwen2.5-math-<size>-bnpo)
    assert bool(differ) == (script != "scripts/run_qwen_math_7b.sh")
    assert all(isinstance(a, str) and (("Qwen2.5-Math-7B" in a and "Qwen2.5-Math-1.5B" in b)
                                                  or ("math-7b" in a and "math-1.5b" in b))
                          for a, b in differ.values()), differ
    # verl's own wiring the table does not list: interpolations resolved, verl's trainer mode, bnpo's dataclass
    assert cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == 32768
    assert cfg.trainer.v1.trainer_mode == "sync"
    assert cfg.algorithm._target_ == "bnpo.verl.algo_config.BNPOAlgoConfig"


def test_dry_run_runs_verls_checks_and_prints_the_memory_plan():
    proc = dry_run("scripts/run_qwen_math_7b.sh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bnpo preflight: verl's validate_config and bnpo's check_run_config passed" in proc.stderr
    assert "memory plan (an estimate): Qwen/Qwen2.5-Math-7B (7.62B parameters) on 4 GPU(s), 4 per node; h100-80gb" \
        in proc.stderr
    assert "  fits by the estimate: " in proc.stderr


@pytest.mark.parametrize("override, named", [
    ("actor_rollout_ref.actor.loss_agg_mode=bogus", "Invalid loss_agg_mode: bogus"),
    ("+algorithm.bnpo.typo=1", "unknown key(s) ['algorithm.bnpo.typo']"),
])
def test_dry_run_fails_where_verl_or_bnpo_would_refuse_the_run(override, named):
    proc = dry_run("scripts/run_qwen_math_7b.sh", override)
    assert proc.returncode == 2 and "error: verl refuses the config" in proc.stderr and named in proc.stderr


def test_env_vars_and_extra_overrides():
    cfg = composed(
        "scripts/run_qwen_math_7b.sh", "trainer.total_epochs=1", "actor_rollout_ref.actor.optim.lr=2e-6",
        MODEL_PATH="/models/q7", DATA_DIR="/data/x", NNODES="2", N_GPUS_PER_NODE="8", TOTAL_EPOCHS="3",
        FIXED_ALPHA="1", FIXED_BETA="1", ROLLOUT_N="8", LOGGER="[console,wandb]",
    )
    assert cfg.actor_rollout_ref.model.path == "/models/q7"
    assert cfg.data.train_files == "/data/x/math_lighteval/train.parquet"
    assert list(cfg.data.val_files)[0] == "/data/x/math500/test.parquet"
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)
    assert cfg.trainer.total_epochs == 1  # the command line wins over the env var
    assert cfg.actor_rollout_ref.actor.optim.lr == pytest.approx(2e-6)
    assert (cfg.algorithm.bnpo.fixed_alpha, cfg.algorithm.bnpo.fixed_beta) == (1, 1)
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.trainer.experiment_name == "qwen2.5-math-7b-bnpo-a1-b1"


def test_ad_bnpo_turns_on_components_and_format_reward():
    cfg = composed("scripts/run_qwen_math_1_5b.sh", ADV_ESTIMATOR="ad_bnpo")
    assert cfg.algorithm.adv_estimator == "ad_bnpo"
    assert list(cfg.algorithm.bnpo.components) == ["acc", "format"]
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is True
    # R1-template data lives apart from the plain one
    assert cfg.data.train_files == f"{HOME}/data/bnpo_r1/math_lighteval/train.parquet"
    assert cfg.trainer.experiment_name == "qwen2.5-math-1.5b-ad_bnpo"


def test_verl_baseline_estimator_passes_through():
    cfg = composed("scripts/run_qwen_math_7b.sh", ADV_ESTIMATOR="grpo", NORM_ADV_BY_STD="false")
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is False


def test_ad_bnpo_without_format_reward_is_refused():
    proc = run_script("scripts/run_qwen_math_7b.sh", ADV_ESTIMATOR="ad_bnpo", USE_FORMAT_REWARD="0")
    assert proc.returncode == 2
    assert "USE_FORMAT_REWARD" in proc.stderr and proc.stdout == ""


def test_val_n_sets_validation_samples_per_question():
    cfg = composed("scripts/run_qwen_math_7b.sh", VAL_N="8")
    assert cfg.actor_rollout_ref.rollout.val_kwargs.n == 8
    assert cfg.actor_rollout_ref.rollout.val_kwargs.do_sample is True


def test_validation_logs_mean_at_k_and_repeated_files_the_same_mean():
    """What verl 0.9.1 logs (val-core/<source>/acc/...): VAL_N=k samples share their question's id,
    while each row of a repeated file gets its own."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    acc = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    val_n = process_validation_metrics(["math-ai/aime24"] * 8, ["q1"] * 4 + ["q2"] * 4, {"acc": acc})
    assert val_n["math-ai/aime24"]["acc"]["mean@4"] == pytest.approx(0.625)
    repeated = process_validation_metrics(["math-ai/aime24"] * 8, [f"row{i}" for i in range(8)], {"acc": acc})
    assert repeated["math-ai/aime24"]["acc"]["mean@1"] == pytest.approx(0.625)


@pytest.mark.parametrize(
    "overrides, env",
    [((), {"USE_FORMAT_REWARD": "1"}),
     (("reward.custom_reward_function.reward_kwargs.format_reward=true",), {})],
    ids=["variable", "argument"],
)
def test_format_reward_on_plain_bnpo_declares_the_range_0_to_2(overrides, env):
    cfg = composed("scripts/run_qwen_math_7b.sh", *overrides, **env)
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is True
    assert (cfg.algorithm.bnpo.reward_min, cfg.algorithm.bnpo.reward_max) == (0.0, 2)
    assert cfg.data.train_files == f"{HOME}/data/bnpo_r1/math_lighteval/train.parquet"


def test_ad_bnpo_keeps_the_range_0_to_1_of_each_component():
    cfg = composed("scripts/run_qwen_math_1_5b.sh", ADV_ESTIMATOR="ad_bnpo")
    assert cfg.algorithm.bnpo.reward_max == 1.0


def test_an_explicit_reward_max_wins():
    cfg = composed("scripts/run_qwen_math_7b.sh", "algorithm.bnpo.reward_max=3", USE_FORMAT_REWARD="1")
    assert cfg.algorithm.bnpo.reward_max == 3


def _scores(format_reward: bool) -> tuple[np.ndarray, list[str]]:
    """compute_score on 4 outputs for each of 3 questions: acc + format in {0, 1, 2}."""
    pytest.importorskip("math_verify")
    from bnpo.rewards import compute_score

    outputs = ["<think>a</think><answer>\\boxed{2}</answer>", "\\boxed{2}", "<think>a</think><answer>3</answer>", "x"]
    scores, uids = [], []
    for q in range(3):
        for i, text in enumerate(outputs[q:] + outputs[:q]):
            scores.append(compute_score("test", text, "2", format_reward=format_reward)["score"])
            uids.append(f"q{q}")
    return np.array(scores), uids


def test_bnpo_accepts_the_scores_of_a_format_reward_run():
    """The step-1 advantage with the composed config and real scores: no range error."""
    import verl  # noqa: F401  (registers the estimators)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    scores, uids = _scores(format_reward=True)
    assert scores.max() == 2.0
    rewards = torch.zeros(len(scores), 4)
    rewards[:, -1] = torch.tensor(scores)
    mask = torch.ones_like(rewards)
    estimator = get_adv_estimator_fn("bnpo")
    cfg = composed("scripts/run_qwen_math_7b.sh", USE_FORMAT_REWARD="1")
    adv, _ = estimator(token_level_rewards=rewards, response_mask=mask, index=np.array(uids), config=cfg.algorithm)
    assert torch.isfinite(adv).all()
    # the same scores under the accuracy-only range would stop the run
    with pytest.raises(ValueError, match="reward_max"):
        estimator(token_level_rewards=rewards, response_mask=mask, index=np.array(uids),
                  config=composed("scripts/run_qwen_math_7b.sh").algorithm)


def test_components_with_plain_bnpo_are_refused():
    proc = run_script("scripts/run_qwen_math_7b.sh", BNPO_COMPONENTS="[acc]")
    assert proc.returncode == 2 and "only apply to ADV_ESTIMATOR=ad_bnpo" in proc.stderr and proc.stdout == ""


# ----------------------------------------------------------------------------------------------
# the pre-flight on a machine's GPUs (bnpo.verl.preflight; its cases in tests/test_preflight.py)
# ----------------------------------------------------------------------------------------------


def _fake_nvidia_smi(folder: Path, gpus: int) -> str:
    """A PATH whose nvidia-smi answers the pre-flight's query with ``gpus`` H100s (and nothing else of the host's)."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo '{i}, NVIDIA H100 80GB HBM3, 81559, 470, 0, 580.65.06'\n" for i in range(gpus)))
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{script_env()['PATH']}"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_run_without_gpus_says_what_to_run_and_stops_on_what_this_machine_lacks(tmp_path):
    """The GPU count is verl's check; the pre-flight points to what runs here, and stops on the missing flash-attn."""
    proc = run_script("scripts/run_qwen_math_7b.sh", dry_run=False, PATH=_fake_nvidia_smi(tmp_path / "bin", 0))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "this machine has no GPU: verl's trainer will stop when it asks Ray for 4" in proc.stderr
    assert f"DRY_RUN=1 bash {ROOT}/scripts/run_qwen_math_7b.sh" in proc.stderr
    assert "bash scripts/run_cpu_smoke.sh" in proc.stderr
    assert f"error: flash-attn 2.8.3 ({stack.pinned_by()[1]} pin) does not import" in proc.stderr
    assert "verl.trainer.main_ppo" not in proc.stderr  # stopped before verl's trainer was started


def test_dry_run_on_an_eight_gpu_node_gives_verl_all_eight_and_checks_their_stack(tmp_path):
    proc = run_script("scripts/run_qwen_math_7b.sh", PATH=_fake_nvidia_smi(tmp_path / "bin", 8))
    assert yaml.safe_load(proc.stdout)["trainer"]["n_gpus_per_node"] == 8
    assert "GPUs: 1 node(s) x 8 (nvidia-smi lists 8), every GPU of the node" in proc.stderr
    # this machine's CPU torch cannot use the GPUs: a real run here would stop, a dry run (meant elsewhere) notes it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not on this machine (a run here would stop): nvidia-smi lists 8 GPU(s)" in proc.stderr
    assert f"is installed; {stack.pinned_by()[0]} pins 2.11.0" in proc.stderr  # verl 0.9.0 declares none: the recipe's


def test_the_dry_run_composes_exactly_what_main_ppo_composes():
    """The pre-flight's config against Hydra's own print of main_ppo's (``--cfg job``), for the same overrides."""
    import sys

    overrides = ["trainer.total_epochs=1", "algorithm.bnpo.max_weight=100", "actor_rollout_ref.rollout.n=8"]
    recipe = ["--config-path", str(ROOT / "bnpo/recipe"), "--config-name", "bnpo_trainer"]
    env = script_env()
    ours = subprocess.run([sys.executable, "-m", "bnpo.verl.preflight", "--dry-run", *recipe, "--", *overrides],
                          capture_output=True, text=True, timeout=600, env=env)
    verls = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *recipe, "--cfg", "job", *overrides],
                           capture_output=True, text=True, timeout=600, env=env)
    assert ours.returncode == 0 and verls.returncode == 0, (ours.stderr[-2000:], verls.stderr[-2000:])
    assert yaml.safe_load(ours.stdout) == yaml.safe_load(verls.stdout)
    assert yaml.safe_load(ours.stdout)["algorithm"]["bnpo"]["max_weight"] == 100
