"""bnpo.verl.preflight in-process, on the recipe's config as verl composes it, with this machine's GPUs and GPU stack
replaced by fakes (a GPU machine's answers): what a real run is refused for, what only warns, and what it is given.

The one rule: what the run would certainly fail on is an error, except a problem of this machine only, which a dry run
reports as a note; what is estimated or only may matter is a warning."""

from __future__ import annotations

import os

import pytest

from bnpo.recipe import CONFIG_DIR
from bnpo.verl.preflight import stack, storage
from bnpo.verl.preflight import run as preflight

H100_CUDA_MIB = 81559 - 470  # nvidia-smi's memory.total less memory.reserved


def h100s(count: int, driver: str = "580.65.06", used_mib: int = 0) -> preflight.Found:
    gpus = [preflight.GPU(i, "NVIDIA H100 80GB HBM3", H100_CUDA_MIB, used_mib, driver) for i in range(count)]
    return preflight.Found(gpus, None, f"nvidia-smi lists {count}")


def verl_stack(**changes: dict) -> dict:
    """What a fresh interpreter imports on a machine installed by scripts/install_gpu.sh (verl's pins, CUDA 13)."""
    found = {dist: {"version": version} for dist, version in stack.wanted().items()}
    found["torch"].update(cuda="13.0", cuda_available=True)
    found.update(changes)
    return found


NO_FLASH = {"flash-attn": {"error": "ModuleNotFoundError: No module named 'flash_attn'"}}


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Set this machine's GPUs and stack; the data files exist; checkpoints go to tmp_path."""
    data = tmp_path / "data.parquet"
    data.write_bytes(b"")
    overrides = [f"data.train_files={data}", f"data.val_files=[{data}]",
                 f"trainer.default_local_dir={tmp_path / 'ckpt'}"]

    def set_machine(found: preflight.Found, installed: dict | None = None) -> list[str]:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setattr(preflight, "find", lambda address: found)
        monkeypatch.setattr(preflight.stack, "installed", lambda: installed if installed is not None else verl_stack())
        return overrides

    return set_machine


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = preflight.main(["--config-path", CONFIG_DIR, *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_a_run_gets_every_gpu_of_the_node_unless_told(machine, capsys):
    overrides = machine(h100s(8))
    rc, out, err = run(capsys, *overrides)
    assert (rc, out) == (0, "trainer.n_gpus_per_node=8\n"), err[-3000:]
    assert "memory plan (an estimate): Qwen/Qwen2.5-Math-7B (7.62B parameters) on 8 GPU(s)" in err
    assert "NVIDIA H100 80GB HBM3, 79.2 GiB each (this machine's GPU 0" in err  # the CUDA-visible total
    rc, out, err = run(capsys, *overrides, "trainer.n_gpus_per_node=4")
    assert (rc, out) == (0, ""), err[-3000:]  # told: nothing added
    # more than the node has: verl's resource pool refuses it before any GPU work, the pre-flight does not re-check
    rc, out, err = run(capsys, *overrides, "trainer.n_gpus_per_node=16")
    assert (rc, out) == (0, "") and "GPUs: 1 node(s) x 16" in err, err[-3000:]


def test_a_cluster_with_a_cpu_only_head_gets_every_gpu_of_its_gpu_nodes(machine, capsys):
    rc, out, err = run(capsys, *machine(preflight.Found([], [0, 8, 8], "a Ray cluster with [0, 8, 8] GPUs")))
    assert (rc, out) == (0, "trainer.n_gpus_per_node=8\n"), err[-3000:]
    assert "GPUs: 1 node(s) x 8" in err
    assert preflight.Found([], [0, 0], "").per_node == 0 and preflight.Found([], [4, 8], "").per_node == 4


def test_nvidia_smis_total_less_its_reserve_is_what_cuda_sees(tmp_path, monkeypatch):
    """An H200 of this project's device machine: nvidia-smi 143771 MiB, 616 reserved; torch's total 143155 MiB."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$*\" in *memory.reserved*) echo '0, NVIDIA H200, 143771, 616, 2048, 580.159.04';;"
                   " *) echo '0, NVIDIA H200, 143771, 2048, 580.159.04';; esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (gpu,) = preflight.local_gpus().gpus
    assert (gpu.cuda_mib, gpu.used_mib, gpu.driver) == (143155, 2048, "580.159.04")
    smi.write_text("#!/bin/sh\ncase \"$*\" in *memory.reserved*) echo 'Field is not a valid field' >&2; exit 2;;"
                   " *) echo '0, NVIDIA H200, 143771, 2048, 580.159.04';; esac\n")  # a driver without the field
    assert preflight.local_gpus().gpus[0].cuda_mib == 143771


def test_a_torch_that_cannot_use_the_gpus_is_refused_an_old_driver_that_works_is_not(machine, capsys):
    broken = verl_stack(torch={"version": "2.11.0", "cuda": "13.0", "cuda_available": False,
                               "cuda_error": "The NVIDIA driver on your system is too old (found version 12040)"})
    rc, _, err = run(capsys, *machine(h100s(4, driver="550.54.15"), broken))
    assert rc == 2 and "error: nvidia-smi lists 4 GPU(s) (NVIDIA driver 550.54.15) but torch 2.11.0" in err
    assert "driver on your system is too old" in err and "need driver 580 or newer" in err
    rc, _, err = run(capsys, *machine(h100s(4, driver="550.54.15")))  # cuda-compat: CUDA 13 works on it
    assert rc == 0, err[-3000:]


def test_version_differences_warn_what_does_not_import_stops_a_real_run(machine, capsys):
    """vllm's patch version and another torch may work; a package that does not import never does."""
    other = verl_stack(vllm={"version": "0.24.1"}, torch={"version": "2.13.0+cu130", "cuda": "13.0", "cuda_available": True})
    rc, _, err = run(capsys, *machine(h100s(4), other))
    assert rc == 0, err[-3000:]
    who = stack.pinned_by()[0]  # verl 0.9.1's own pins; on verl 0.9.0, which declares none, the recipe's
    assert f"warning: vllm 0.24.1 is installed; {who} pins 0.24.0" in err
    assert f"warning: torch 2.13.0+cu130 is installed; {who} pins 2.11.0" in err
    overrides = machine(h100s(4), verl_stack(**NO_FLASH))
    rc, _, err = run(capsys, *overrides)
    assert rc == 2 and f"error: flash-attn 2.8.3 ({stack.pinned_by()[1]} pin) does not import: ModuleNotFoundError" in err
    rc, _, err = run(capsys, "--dry-run", *overrides)  # a dry run is meant for another machine
    assert rc == 0 and "not on this machine (a run here would stop): flash-attn 2.8.3" in err


def test_packed_sequences_need_flash_attention(machine, capsys):
    overrides = machine(h100s(4))
    rc, _, err = run(capsys, *overrides, "+actor_rollout_ref.model.override_config.attn_implementation=sdpa")
    assert rc == 2
    assert ("actor_rollout_ref.model.override_config.attn_implementation=sdpa with "
            "actor_rollout_ref.model.use_remove_padding=true") in err
    # padded batches may use sdpa, and then need no flash-attn (and plan verl's cross-entropy without it)
    no_flash = machine(h100s(4), verl_stack(**NO_FLASH))
    rc, _, err = run(capsys, *no_flash, "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                     "actor_rollout_ref.model.use_remove_padding=false")
    assert rc == 0, err[-3000:]


def test_a_busy_gpu_is_refused_where_vllm_would_refuse_it(machine, capsys):
    overrides = machine(h100s(4, used_mib=20000))
    rc, _, err = run(capsys, *overrides)
    assert rc == 2 and "20000 MiB already in use" in err
    assert "error: vLLM asks for 63.4 GiB (0.8 x 79.2) but only 59.7 GiB of the NVIDIA H100 80GB HBM3 are free" in err
    rc, _, err = run(capsys, *machine(h100s(4, used_mib=10000)))  # vLLM starts; the estimated peak may not fit
    assert rc == 0 and "warning: the estimated peak 72.1 GiB is more than the 69.4 GiB free" in err, err[-3000:]


def test_a_plan_that_does_not_fit_is_refused_with_its_numbers(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4)), "actor_rollout_ref.actor.fsdp_config.optimizer_offload=false")
    assert rc == 2
    assert ("DOES NOT FIT: the rollout phase's exact items (parameters, gradients, Adam moments, vLLM's budget) alone "
            "need 84.6 GiB per GPU, more than the 79.2 GiB") in err
    assert "overrides to try: actor_rollout_ref.actor.fsdp_config.optimizer_offload=true" in err


def test_without_gpus_a_dry_run_plans_for_a_named_card(machine, capsys, monkeypatch):
    overrides = machine(preflight.Found([], None, "nvidia-smi: not found"),
                        verl_stack(torch={"version": "2.13.0+cpu", "cuda": None, "cuda_available": False}))
    rc, out, err = run(capsys, "--dry-run", *overrides)
    assert rc == 0, err[-3000:]
    assert "\nactor_rollout_ref:\n" in out and "bnpo preflight" not in out  # the config as YAML, nothing else
    assert "h100-80gb, 79.2 GiB each (no GPU here" in err and "warning: torch is built for CUDA None" in err
    monkeypatch.setenv("BNPO_PLAN_GPU", "a100-40gb")
    rc, _, err = run(capsys, "--dry-run", *overrides, "trainer.n_gpus_per_node=8")  # over only by the estimates
    assert rc == 0 and "a100-40gb, 39.6 GiB each (named card)" in err and "warning: the update phase is estimated" in err
    rc, _, err = run(capsys, "--dry-run", *overrides, "trainer.n_gpus_per_node=2")  # over by the exact items
    assert rc == 2 and "DOES NOT FIT: the rollout phase's exact items" in err and "the update phase's exact items" in err


def test_a_real_run_leaves_the_gpu_count_data_and_validate_config_to_verl(machine, capsys, monkeypatch, tmp_path):
    """main_ppo runs validate_config first, and its trainer opens the data and asks Ray for the GPUs before any GPU
    work: the pre-flight of a real run does none of that again (a dry run, which no main_ppo follows, validates)."""
    import verl.utils.config as verl_config

    calls = []
    validate = verl_config.validate_config
    monkeypatch.setattr(verl_config, "validate_config", lambda *a, **k: calls.append(1) or validate(*a, **k))
    overrides = machine(preflight.Found([], None, "nvidia-smi: not found"))
    rc, out, err = run(capsys, *overrides, f"data.train_files={tmp_path / 'absent.parquet'}")
    assert (rc, out, calls) == (0, "", []), err[-3000:]
    assert "this machine has no GPU: verl's trainer will stop when it asks Ray for 4" in err
    assert "DRY_RUN=1 bash" in err and "bash scripts/run_cpu_smoke.sh" in err
    rc, _, err = run(capsys, "--dry-run", *overrides)
    assert rc == 0 and calls == [1] and "verl's validate_config and bnpo's check_run_config passed" in err


def test_the_checkpoint_to_resume_from_is_named(machine, capsys, tmp_path):
    overrides = machine(h100s(4))
    rc, _, err = run(capsys, *overrides)
    assert rc == 0 and "resume_mode=auto: no checkpoint yet: a fresh start" in err
    assert "no checkpoint yet: a fresh start), about 85 GiB each (fp32 parameters and Adam moments)" in err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("150")
    rc, _, err = run(capsys, *overrides)
    assert rc == 0 and f"checkpoints: {tmp_path / 'ckpt'} (trainer.default_local_dir; resume_mode=auto: resumes " \
                       "from global_step_150)" in err


def test_an_unknown_model_without_files_gets_no_plan_but_no_failure(machine, capsys):
    rc, _, err = run(capsys, *machine(h100s(4)), "actor_rollout_ref.model.path=org/unknown-model")
    assert rc == 0 and "no memory plan: actor_rollout_ref.model.path=org/unknown-model" in err


def test_a_cluster_node_without_the_shared_checkpoint_folder_or_the_data_stops_a_real_run(machine, capsys, monkeypatch):
    overrides = machine(preflight.Found([], [8, 8], "a Ray cluster with [8, 8] GPUs"))
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
    rc, _, err = run(capsys, "--dry-run", *overrides)  # a dry run reports the same, as notes
    assert rc == 0 and "node 10.0.0.2 does not see" in err


def test_a_cluster_node_where_bnpo_does_not_load_stops_a_real_run_naming_the_node(machine, capsys, monkeypatch):
    overrides = machine(preflight.Found([], [8, 8], "a Ray cluster with [8, 8] GPUs"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    why = "node 10.0.0.3: bnpo does not import there (ModuleNotFoundError: No module named 'bnpo')"
    monkeypatch.setattr(preflight.storage, "cluster_check", lambda address, folder, paths: storage.SharedCheck(
        2, [], [], [why]))
    rc, _, err = run(capsys, *overrides)
    assert rc == 2 and f"error: {why}" in err and "register in verl on every node" not in err
    monkeypatch.setattr(preflight.storage, "cluster_check", lambda address, folder, paths: storage.SharedCheck(2, [], []))
    rc, _, err = run(capsys, *overrides)
    assert "bnpo: its estimators register in verl on every node of the cluster (2)" in err
