"""bnpo.verl.preflight in-process, on the recipe's config as verl composes it, with this machine's GPUs and GPU stack
replaced by fakes (a GPU machine's answers): what a real run is refused for, and what it is given."""

from __future__ import annotations

import pytest

from bnpo.verl.preflight import gpus, stack, storage
from bnpo.verl.preflight import run as preflight
from recipe_helpers import ROOT

CONFIG = str(ROOT / "recipe/bnpo/config")


def h100s(count: int, driver: str = "580.65.06", used_mib: int = 0) -> gpus.Found:
    return gpus.Found([gpus.GPU(i, "NVIDIA H100 80GB HBM3", 81559, used_mib, driver) for i in range(count)], None,
                      f"nvidia-smi lists {count}")


def verl_stack(**changes: dict) -> dict:
    """What a fresh interpreter imports on a machine installed by scripts/install_gpu.sh (verl's pins, CUDA 13)."""
    found = {dist: {"version": version} for dist, version in stack.wanted().items()}
    found["torch"]["cuda"] = "13.0"
    found.update(changes)
    return found


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Set this machine's GPUs and stack; the data files exist; checkpoints go to tmp_path."""
    data = tmp_path / "data.parquet"
    data.write_bytes(b"")
    overrides = [f"data.train_files={data}", f"data.val_files=[{data}]",
                 f"trainer.default_local_dir={tmp_path / 'ckpt'}"]

    def set_machine(found: gpus.Found, installed: dict | None = None) -> list[str]:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setattr(preflight.gpus, "find", lambda: found)
        monkeypatch.setattr(preflight.stack, "installed", lambda: installed if installed is not None else verl_stack())
        return overrides

    return set_machine


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = preflight.main(["--config-path", CONFIG, *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_a_run_gets_every_gpu_of_the_node_unless_told(machine, capsys):
    overrides = machine(h100s(8))
    rc, out, err = run(capsys, *overrides)
    assert (rc, out) == (0, "trainer.n_gpus_per_node=8\n"), err[-3000:]
    assert "memory plan: Qwen/Qwen2.5-Math-7B (7.62B parameters) on 8 GPU(s)" in err
    assert "NVIDIA H100 80GB HBM3, 79.6 GiB each (this machine's GPU 0" in err
    rc, out, err = run(capsys, *overrides, "trainer.n_gpus_per_node=4")
    assert (rc, out) == (0, ""), err[-3000:]  # told: nothing added
    rc, out, err = run(capsys, *overrides, "trainer.n_gpus_per_node=16")
    assert rc == 2 and "needs 1 node(s) x 16 GPU(s)" in err and "this machine has 8 usable GPU(s)" in err


def test_a_cluster_with_a_cpu_only_head_gets_every_gpu_of_its_gpu_nodes(machine, capsys):
    rc, out, err = run(capsys, *machine(gpus.Found([], [0, 8, 8], "a Ray cluster with [0, 8, 8] GPUs")))
    assert (rc, out) == (0, "trainer.n_gpus_per_node=8\n"), err[-3000:]
    assert "GPUs: 1 node(s) x 8" in err
    assert gpus.Found([], [0, 0], "").per_node == 0 and gpus.Found([], [4, 8], "").per_node == 4


def test_an_old_driver_is_refused(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4, driver="550.54.15")))
    assert rc == 2 and "NVIDIA driver 550.54.15" in err and "need driver 580 or newer" in err


def test_the_wrong_gpu_stack_is_refused_on_a_gpu_machine(machine, capsys):
    overrides = machine(h100s(4), verl_stack(torch={"version": "2.13.0+cu130", "cuda": "13.0"},
                                             **{"flash-attn": {"error": "ModuleNotFoundError: No module named 'flash_attn'"}}))
    rc, _, err = run(capsys, *overrides)
    assert rc == 2
    assert "error: torch 2.13.0+cu130 is installed; verl 0.9.1 pins 2.11.0" in err
    assert "error: flash-attn 2.8.3 (verl's pin) does not import: ModuleNotFoundError" in err
    cuda12 = machine(h100s(4), verl_stack(torch={"version": "2.11.0", "cuda": "12.8"}))
    rc, _, err = run(capsys, *cuda12)
    assert rc == 2 and "torch is built for CUDA 12.8; verl's pins are CUDA 13 builds" in err


def test_packed_sequences_need_flash_attention(machine, capsys):
    overrides = machine(h100s(4))
    rc, _, err = run(capsys, *overrides, "+actor_rollout_ref.model.override_config.attn_implementation=sdpa")
    assert rc == 2
    assert ("actor_rollout_ref.model.override_config.attn_implementation=sdpa with "
            "actor_rollout_ref.model.use_remove_padding=true") in err
    # padded batches may use sdpa, and then need no flash-attn
    no_flash = machine(h100s(4), verl_stack(**{"flash-attn": {"error": "ModuleNotFoundError: No module named 'flash_attn'"}}))
    rc, _, err = run(capsys, *no_flash, "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                     "actor_rollout_ref.model.use_remove_padding=false")
    assert rc == 0, err[-3000:]


def test_busy_gpus_are_planned_against_their_free_memory(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4, used_mib=20000)))
    assert rc == 2 and "20000 MiB already in use" in err
    assert "only 60.1 GiB of NVIDIA H100 80GB HBM3 are free" in err


def test_a_plan_that_does_not_fit_is_refused_with_its_numbers(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4)), "actor_rollout_ref.actor.fsdp_config.optimizer_offload=false")
    assert rc == 2
    assert "DOES NOT FIT: the rollout phase needs 86.7 GiB per GPU, more than the 79.6 GiB" in err
    assert "try: actor_rollout_ref.actor.fsdp_config.optimizer_offload=true" in err


def test_without_gpus_a_dry_run_plans_for_a_named_card_and_a_real_run_stops(machine, capsys, monkeypatch):
    overrides = machine(gpus.Found([], None, "nvidia-smi: not found"), verl_stack(torch={"version": "2.13.0+cpu", "cuda": None}))
    rc, out, err = run(capsys, "--dry-run", *overrides)
    assert rc == 0, err[-3000:]
    assert "\nactor_rollout_ref:\n" in out and "bnpo preflight" not in out  # the config as YAML, nothing else
    assert "h100-80gb, 79.6 GiB each (no GPU here" in err and "not on this machine (a run here would stop)" in err
    monkeypatch.setenv("BNPO_PLAN_GPU", "a100-40gb")
    rc, _, err = run(capsys, "--dry-run", *overrides, "trainer.n_gpus_per_node=8")
    assert rc == 2 and "a100-40gb, 40.0 GiB each (named card)" in err and "DOES NOT FIT" in err
    monkeypatch.delenv("BNPO_PLAN_GPU")
    rc, out, err = run(capsys, *overrides)
    assert rc == 2 and out == ""
    assert "error: this run needs 1 node(s) x 4 GPU(s) (trainer.nnodes, trainer.n_gpus_per_node), but this machine " \
           "has 0 usable GPU(s) (nvidia-smi: not found)" in err


def test_missing_data_stops_a_real_run(machine, capsys, tmp_path):
    rc, _, err = run(capsys, *machine(h100s(4)), f"data.train_files={tmp_path / 'absent.parquet'}")
    assert rc == 2 and f"error: data.train_files: {tmp_path / 'absent.parquet'} is not on this machine" in err


def test_the_checkpoint_to_resume_from_is_named(machine, capsys, tmp_path):
    overrides = machine(h100s(4))
    rc, _, err = run(capsys, *overrides)
    assert rc == 0 and "resume_mode=auto: no checkpoint yet: a fresh start" in err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("150")
    rc, _, err = run(capsys, *overrides)
    assert rc == 0 and f"checkpoints: {tmp_path / 'ckpt'} (trainer.default_local_dir; resume_mode=auto: resumes " \
                       "from global_step_150)" in err


def test_an_unknown_model_without_files_gets_no_plan_but_no_failure(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4)), "actor_rollout_ref.model.path=org/unknown-model")
    assert rc == 0 and "no memory plan: actor_rollout_ref.model.path=org/unknown-model" in err


def test_a_cluster_node_without_the_shared_checkpoint_folder_or_the_data_stops_a_real_run(machine, capsys, monkeypatch):
    overrides = machine(gpus.Found([], [8, 8], "a Ray cluster with [8, 8] GPUs"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as inside a Ray job
    asked = []

    def cluster_check(address, folder, paths):
        asked.append((address, folder, paths))
        return storage.SharedCheck(2, ["node 10.0.0.2"], ["node 10.0.0.2: /data/train.parquet"])

    monkeypatch.setattr(preflight.storage, "cluster_check", cluster_check)
    rc, out, err = run(capsys, *overrides)
    assert rc == 2 and out == ""
    (address, folder, paths), = asked
    assert address == "10.0.0.1:6379" and folder.endswith("ckpt") and any(p.endswith("data.parquet") for p in paths)
    assert f"error: node 10.0.0.2 does not see {folder} as this node does (CKPT_DIR must be storage every node shares" in err
    assert "error: node 10.0.0.2: /data/train.parquet is missing (data and a local model must be on every node)" in err
    rc, _, err = run(capsys, "--dry-run", *overrides)  # a dry run reports the same, as warnings
    assert rc == 0 and "node 10.0.0.2 does not see" in err
