"""A verl that changed under bnpo stops a bnpo run at start-up, naming the place; so does an unsupported verl, a
half-installed plugin (each verl place removed in turn), and a trainer module that no longer imports under its name."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from oracle import reference_ad_bnpo
from verl_helpers import ROOT, run_python, verl_config

from bnpo.verl import compat
from bnpo.verl.startup import check_run_config

# Loaded by verl before the entry-point plugins (VERL_USE_EXTERNAL_MODULES): "renames" a method bnpo wraps, as a
# newer verl might, before bnpo's plugin extends the trainer.
RENAMED = textwrap.dedent(
    """
    import verl.trainer.ppo.v1.trainer_base as trainer_base
    trainer_base.PPOTrainer._compute_advantages = trainer_base.PPOTrainer._compute_advantage
    del trainer_base.PPOTrainer._compute_advantage
    """
)


@pytest.fixture
def renamed(tmp_path):
    (tmp_path / "renamed_in_verl.py").write_text(RENAMED)
    return {"VERL_USE_EXTERNAL_MODULES": "renamed_in_verl", "PYTHONPATH": str(tmp_path)}


def test_main_ppo_stops_at_startup_when_a_wrapped_verl_method_is_gone(renamed):
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=bnpo", env=renamed)
    assert out.returncode != 0
    assert "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage is missing" in out.stderr
    assert "ray init kwargs" not in out.stdout  # before Ray started


def test_the_training_process_refuses_to_build_a_bnpo_trainer_when_the_extension_failed(renamed):
    probe = textwrap.dedent(
        """
        import verl
        from omegaconf import OmegaConf
        from verl.trainer.ppo.v1 import get_trainer_cls
        for estimator in ("bnpo", "grpo"):
            config = OmegaConf.create({"algorithm": {"adv_estimator": estimator}})
            try:
                get_trainer_cls("sync")(config)
            except Exception as err:
                print(estimator, type(err).__name__, err)
        """
    )
    out = run_python("-c", probe, env=renamed)
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert "VerlChanged" in lines["bnpo"] and "PPOTrainer._compute_advantage is missing" in lines["bnpo"]
    assert "VerlChanged" not in lines.get("grpo", "")  # other estimators still build (and fail on their own terms)


def test_other_estimators_still_start_with_a_changed_verl(renamed):
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=grpo", "--cfg", "job", env=renamed)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("version, supported", [
    ("0.9.0", True), ("0.9.1", True), ("0.9.2rc1", True), ("0.9.1+internal", True), ("0.10.0.dev", True),
    # upstream main: any dev or pre-release build of 0.10.0, so main moving on locks no user out; not 0.10.0 itself
    ("0.10.0.dev0", True), ("0.10.0.dev3", True), ("0.10.0.dev20261201", True), ("0.10.0.dev0+g1dda039", True),
    ("0.10.0a2", True), ("0.10.0b1.dev3", True), ("0.10.0rc1", True), ("0.10.0", False), ("0.10.0+internal", False),
    ("0.10.0.post1.dev0", False), ("0.10.1.dev0", False), ("0.11.0.dev0", False),
    ("0.8.0", False), ("0.9.0.dev", False), ("1.0.0", False), (None, False), ("unknown", False),
])
def test_the_supported_verl_versions(version, supported):
    assert compat.is_supported(version) is supported


def test_a_verl_outside_the_supported_range_is_refused_at_startup_naming_the_range_and_the_fix(monkeypatch, caplog):
    config = verl_config("algorithm.adv_estimator=bnpo")
    monkeypatch.setattr(compat, "installed_verl", lambda: "0.8.0")
    with pytest.raises(compat.VerlChanged, match=re.escape(
            "bnpo supports verl >=0.9.0,<0.10 and upstream main (0.10.0 dev and pre-release builds); this is verl "
            "0.8.0. Install a supported verl (pip install 'verl[verl-core]>=0.9.0,<0.10'")):
        check_run_config(config)
    assert check_run_config(verl_config("algorithm.adv_estimator=grpo")) is None  # other estimators: not bnpo's call
    monkeypatch.setenv(compat.ALLOW_UNSUPPORTED, "1")  # a team trying a newer verl: a warning, every place still checked
    with caplog.at_level(logging.WARNING):
        assert check_run_config(config) is not None
    assert "this is verl 0.8.0" in caplog.text and "BNPO_ALLOW_UNSUPPORTED_VERL is set" in caplog.text
    monkeypatch.delenv(compat.ALLOW_UNSUPPORTED)
    for version in ("0.9.0", "0.9.1", "0.10.0.dev", "0.10.0.dev20261201", "0.10.0rc1"):
        monkeypatch.setattr(compat, "installed_verl", lambda v=version: v)
        assert check_run_config(config) is not None


def test_every_place_bnpo_relies_on_exists_in_the_installed_verl():
    import importlib

    for module_name in compat.PLACES:
        module = importlib.import_module(module_name)
        assert compat.require_all(module)  # VerlChanged names the first missing place


# ---- a half-installed plugin never trains: each verl place bnpo relies on, removed in turn ----

PLACES = [(module, dotted) for module, attributes in compat.PLACES.items() for dotted in attributes]


def _remove(monkeypatch, module_name: str, dotted: str) -> None:
    owner = importlib.import_module(module_name)
    *path, attribute = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    monkeypatch.delattr(owner, attribute)


@pytest.mark.parametrize("module_name, dotted", PLACES, ids=[f"{m}.{d}" for m, d in PLACES])
def test_a_plugin_that_loads_without_a_verl_place_refuses_every_bnpo_run(monkeypatch, module_name, dotted):
    """verl without ``module.dotted`` when bnpo's plugin loads (what `import verl` does): the failure is recorded with
    the place, bnpo's estimator refuses to compute, and the start-up check stops a bnpo run naming the place."""
    import bnpo.verl.plugin as plugin
    from bnpo.verl import hooks
    from bnpo.verl.estimators import ESTIMATOR_FUNCTIONS

    import verl.trainer.ppo.core_algos as core_algos
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    gated = []
    monkeypatch.setattr(hooks, "FAILED", {})
    monkeypatch.setattr(compat, "gate_classes", lambda module, err: gated.append(module.__name__))  # tested below
    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", ADV_ESTIMATOR_REGISTRY)  # restored after the test
    _remove(monkeypatch, module_name, dotted)
    plugin._load()  # the plugin as verl loads it: every trainer module here is imported already, so all hooks run now
    place = f"{module_name}.{dotted}"
    assert any(place in str(err) for err in hooks.FAILED.values()), hooks.FAILED
    assert gated == ([module_name] if module_name in plugin.EXTENSIONS else [])

    trl, mask, index = outcome_batch([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"])
    with pytest.raises(compat.VerlChanged, match=re.escape(place)):
        ESTIMATOR_FUNCTIONS["bnpo"](token_level_rewards=trl, response_mask=mask, index=index, config=None)
    with pytest.raises((compat.VerlChanged, ValueError), match=re.escape(place)):
        check_run_config(verl_config("algorithm.adv_estimator=bnpo"))
    assert check_run_config(verl_config("algorithm.adv_estimator=grpo")) is None  # other estimators are untouched


# Loaded by verl before the entry-point plugins: verl's validate_config moved out of verl.utils.config.
VALIDATE_CONFIG_MOVED = textwrap.dedent(
    """
    import verl.utils.config as config
    config.check_config = config.validate_config
    del config.validate_config
    """
)


def test_with_validate_config_gone_the_estimator_refuses_to_compute(tmp_path):
    """The half-install the start-up check cannot see (it is what moved): bnpo's estimator, called as verl's trainers
    call it, raises with the recorded error instead of returning advantages."""
    (tmp_path / "moved_in_verl.py").write_text(VALIDATE_CONFIG_MOVED)
    probe = textwrap.dedent(
        """
        import verl
        from batches import outcome_batch
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        trl, mask, index = outcome_batch([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"])
        try:
            get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, index=index, config=None)
            print("RESULT advantages")
        except Exception as err:
            print("RESULT", type(err).__name__, err)
        """
    )
    env = {"VERL_USE_EXTERNAL_MODULES": "moved_in_verl", "PYTHONPATH": f"{tmp_path}:{ROOT / 'tests'}"}
    out = run_python("-c", probe, env=env)
    result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert "VerlChanged" in result and "verl.utils.config.validate_config is missing" in result, out.stderr[-2000:]
    assert "bnpo: the verl plugin failed at verl.utils.config.validate_config" in out.stderr


def test_the_package_level_validate_config_runs_the_startup_check_too():
    import verl.utils
    import verl.utils.config

    assert verl.utils.validate_config is verl.utils.config.validate_config  # the same wrapped function
    with pytest.raises(ValueError, match=r"algorithm\.bnpo\.reward_mx"):
        verl.utils.validate_config(verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_mx=2"),
                                   use_reference_policy=False, use_critic=False)


def test_importing_the_plugin_again_replaces_its_registration_and_wrappers():
    """A second import of bnpo (sys.modules purged, a reloaded package) is idempotent: nothing fails, the registry and
    verl's functions hold the new bnpo's code, and a step's statistics reach the new bnpo's scope."""
    probe = textwrap.dedent(
        """
        import sys
        import verl
        import verl.trainer.ppo.ray_trainer as ray_trainer
        for name in [n for n in sys.modules if n == "bnpo" or n.startswith("bnpo.")]:
            del sys.modules[name]
        import bnpo.verl.plugin
        from bnpo.verl import estimator_scope, hooks
        from bnpo.verl.estimators import ESTIMATOR_FUNCTIONS
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
        from verl_helpers import legacy_batch, verl_config
        print("FAILED", dict(hooks.FAILED))
        print("REGISTERED", ADV_ESTIMATOR_REGISTRY["bnpo"] is ESTIMATOR_FUNCTIONS["bnpo"])
        wrapped = ray_trainer.compute_advantage
        print("ONE_WRAP", not hasattr(wrapped.__wrapped__, "_bnpo_wrapped"))
        batch = legacy_batch([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b", "c", "c"])
        with estimator_scope() as scope:
            ray_trainer.compute_advantage(batch, adv_estimator="bnpo", config=verl_config().algorithm)
        print("STATS", scope.stats.num_questions)
        """
    )
    out = run_python("-c", probe, env={"PYTHONPATH": str(ROOT / "tests")})
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert lines == {"FAILED": "{}", "REGISTERED": "True", "ONE_WRAP": "True", "STATS": "3"}, out.stderr[-3000:]
    assert "already been registered" not in out.stderr and "plugin failed" not in out.stderr


def test_post_import_hooks_are_wrapts_and_record_a_failing_extension(tmp_path, monkeypatch):
    """bnpo adds no import finder of its own (wrapt's post-import hooks); a hook runs when its module is first
    imported, and one that fails is recorded instead of breaking that import."""
    import bnpo.verl.plugin  # noqa: F401
    from bnpo.verl import hooks

    # bnpo's own package (the CPU port's bnpo_cpu_e2e adds a finder of its own in the slow tier's processes)
    assert not any(type(finder).__module__.split(".")[0] == "bnpo" for finder in sys.meta_path)
    (tmp_path / "hooked_late.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(hooks, "FAILED", {})
    seen = []
    hooks.when_imported("hooked_late", lambda module: seen.append(module.VALUE))
    hooks.when_imported("hooked_late", lambda module: 1 / 0)
    assert seen == []
    try:
        assert importlib.import_module("hooked_late").VALUE == 1
    finally:
        sys.modules.pop("hooked_late", None)
    assert seen == [1] and isinstance(hooks.FAILED["hooked_late"], ZeroDivisionError)


def test_a_hook_still_fires_after_something_resets_the_import_machinery(tmp_path, monkeypatch):
    """Code that restores sys.meta_path to a copy taken before wrapt added its finder must not leave bnpo's later
    hooks unfired (a trainer module imported after that would train without bnpo's extension)."""
    import wrapt.importer

    from bnpo.verl import hooks

    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, wrapt.importer.ImportHookFinder)])
    (tmp_path / "hooked_after_reset.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hooks.when_imported("hooked_after_reset", lambda module: seen.append(module.VALUE))
    try:
        importlib.import_module("hooked_after_reset")
    finally:
        sys.modules.pop("hooked_after_reset", None)
    assert seen == [2]


# ---- the trainer a run selects: its verl modules must import under the names bnpo hooks ----


def entry_point_config(kind: str, *overrides: str):
    """verl's own config of the entry point that runs ``kind`` (one_step_off_policy's names its search path relative
    to verl's parent folder, so it composes from there, as in verl's own checkout)."""
    import os

    from hydra import compose, initialize_config_dir

    import verl

    root = Path(verl.__file__).parent
    folder, name = {
        "one_step_off_policy": ("experimental/one_step_off_policy/config", "one_step_off_ppo_trainer"),
        "fully_async_policy": ("experimental/fully_async_policy/config", "fully_async_ppo_trainer"),
    }.get(kind, ("trainer/config", "ppo_trainer"))
    cwd = os.getcwd()
    os.chdir(root.parent)
    try:
        with initialize_config_dir(config_dir=str(root / folder), version_base=None):
            return compose(name, overrides=["algorithm.adv_estimator=bnpo", *overrides])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("kind, overrides", [("v1", ()), ("legacy", ("trainer.use_v1=False",)),
                                             ("one_step_off_policy", ()), ("fully_async_policy", ())])
def test_the_startup_check_knows_the_trainer_from_verls_own_entry_point_configs(kind, overrides):
    assert compat.selected_trainer(entry_point_config(kind, *overrides)) == kind


MODULES = [(kind, module) for kind, modules in compat.TRAINER_MODULES.items() for module in modules]


@pytest.mark.parametrize("kind, module", MODULES, ids=[f"{k}:{m}" for k, m in MODULES])
def test_a_trainer_module_that_moved_stops_its_runs_naming_the_module(monkeypatch, kind, module):
    """bnpo hooks verl's modules by name; one that no longer imports under its name (verl moved it) would leave the
    trainer unextended: the start-up check of a run of that trainer stops, naming it. Runs of other trainers go on."""
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ModuleNotFoundError for that name
    overrides = ("trainer.use_v1=False",) if kind == "legacy" else ()
    with pytest.raises(compat.VerlChanged, match=rf"bnpo extends verl's {re.escape(module)} for the {kind} trainer, "
                                                 r"but it does not import under that name .*verl moved or renamed it"):
        check_run_config(entry_point_config(kind, *overrides))
    for other, modules in compat.TRAINER_MODULES.items():
        if module not in modules:
            other_overrides = ("trainer.use_v1=False",) if other == "legacy" else ()
            assert check_run_config(entry_point_config(other, *other_overrides)) is not None, other


def test_building_the_fully_async_trainer_imports_nothing_of_the_v1_trainer():
    probe = textwrap.dedent(
        """
        import sys
        from test_verl_compat import entry_point_config
        from verl.experimental.fully_async_policy.fully_async_trainer import FullyAsyncTrainer
        cls = FullyAsyncTrainer.__ray_actor_class__
        try:
            cls(entry_point_config("fully_async_policy"), tokenizer=None, role_worker_mapping={},
                resource_pool_manager=None)
        except AssertionError:
            pass  # verl's own __init__, after bnpo's check passed, asserts on the engine layout
        print("V1", "verl.trainer.ppo.v1.trainer_base" in sys.modules)
        """
    )
    out = run_python("-c", probe, env={"PYTHONPATH": str(ROOT / "tests")})
    assert "V1 False" in out.stdout, out.stdout[-1000:] + out.stderr[-3000:]


# ---- verl's open pull requests, simulated against the installed verl ----

def _accepts_kwarg(fn, name: str) -> bool:
    """verl PR #7473's test: a declared parameter, or ``**kwargs``."""
    import inspect

    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def test_ad_bnpo_keeps_the_scopes_components_when_verl_passes_every_estimator_its_non_tensor_batch():
    """verl PR #7473 hands ``non_tensor_batch`` (and ``batch``) to every estimator that accepts them. In the v1
    trainer that dict holds only ``uid``: the components bnpo's integration put in the scope must still be read,
    those the dict holds overlay them, and a component in neither is the usual error naming the keys there are."""
    from tensordict import TensorDict
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from bnpo.verl import estimator_scope

    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    fmt = [float(x) for x in np.random.default_rng(1).integers(0, 2, size=len(acc))]
    trl, mask, index = outcome_batch(acc, uids)
    estimator = get_adv_estimator_fn("ad_bnpo")
    assert _accepts_kwarg(estimator, "non_tensor_batch") and _accepts_kwarg(estimator, "batch")
    config = {"bnpo": {"components": ["acc", "format"]}}
    tensors = TensorDict({"token_level_rewards": trl, "response_mask": mask}, batch_size=[len(acc)])
    pr_kwargs = {"non_tensor_batch": {"uid": index}, "batch": tensors}  # what the PR passes in the v1 trainer
    expected = torch.tensor(reference_ad_bnpo({"acc": acc, "format": fmt}, uids), dtype=torch.float64)
    scope_fields = {"acc": np.array(acc, dtype=object), "format": np.array(fmt, dtype=object)}
    with estimator_scope(fields=scope_fields):
        advantages, _ = estimator(trl, mask, index=index, config=config, **pr_kwargs)
    torch.testing.assert_close(scalar(advantages, mask), expected, rtol=1e-4, atol=1e-6)
    with estimator_scope(fields={"acc": scope_fields["acc"]}):  # format only in non_tensor_batch: read from there
        advantages, _ = estimator(trl, mask, index=index, config=config,
                                  non_tensor_batch={"uid": index, "format": scope_fields["format"]})
    torch.testing.assert_close(scalar(advantages, mask), expected, rtol=1e-4, atol=1e-6)
    with estimator_scope(fields={"acc": scope_fields["acc"]}), pytest.raises(
            ValueError, match=re.escape("ad_bnpo component 'format' (from algorithm.bnpo.components) is not among the "
                                        "per-sample batch fields ['acc', 'uid']")):
        estimator(trl, mask, index=index, config=config, **pr_kwargs)


@pytest.mark.parametrize("backend", ["another backend's batch", "TransferQueue without kv_batch_get"])
@pytest.mark.parametrize("estimator", ["bnpo", "ad_bnpo"])
def test_a_v1_trainer_on_another_rollout_data_backend_stops_saying_what_bnpo_needs(monkeypatch, backend, estimator):
    """verl PR #7415 makes the v1 trainer's rollout-data backend pluggable; bnpo reads the reward scores and the
    agent-loop sessions through TransferQueue's kv_batch_get. A batch of another backend (or a TransferQueue without
    kv_batch_get) stops the advantage step with what bnpo needs and the fix, before anything reaches TransferQueue."""
    from types import SimpleNamespace

    tq = pytest.importorskip("transfer_queue")
    from bnpo.verl import trainer_v1

    if backend == "another backend's batch":
        batch = SimpleNamespace(keys=["u_0_0"], partition_id="train_0")  # e.g. a Mooncake handle, not a KVBatchMeta
        found = "the step's batch is a types.SimpleNamespace, not TransferQueue's KVBatchMeta"
    else:
        batch = tq.KVBatchMeta(partition_id="train_0", keys=["u_0_0"], tags=[{}])
        monkeypatch.delattr(tq, "kv_batch_get")
        found = "has no kv_batch_get"
    overrides = ["+algorithm.bnpo.components=[acc]"] if estimator == "ad_bnpo" else []
    trainer = SimpleNamespace(config=verl_config(f"algorithm.adv_estimator={estimator}", *overrides))
    verl_step = []
    step = trainer_v1.extend(lambda self, batch, metrics: verl_step.append(batch))
    with pytest.raises(compat.VerlChanged, match=re.escape(found)) as raised:
        step(trainer, batch, {})
    assert "reads each sample's reward scores and agent-loop session from TransferQueue" in str(raised.value)
    assert "Use verl's TransferQueue rollout-data backend" in str(raised.value) and "trainer.use_v1=False" in str(
        raised.value)
    assert not verl_step
