"""Creates a verl training worker's default process group over gloo on a CPU platform.

Loaded by ``actor_rollout_ref.model.external_lib=bnpo_cpu_e2e.process_group`` in each training worker before the FSDP
engine is built: verl 0.9.1 asks torch for the backend ``"cpu:gloo,cpu:gloo"`` there, which torch rejects, and skips
that call when a default group exists (docs/cpu-e2e.md). Outside a verl worker-group actor on the CPU platform
importing this does nothing.
"""

from __future__ import annotations

import os

import torch.distributed as dist

_WORKER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_gloo_process_group() -> bool:
    """Initialise the default gloo group in a CPU verl worker; returns whether it did."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return False
    if os.environ.get("WG_BACKEND") != "ray" or not all(os.environ.get(k) for k in _WORKER_ENV):
        return False
    if not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(
        backend="gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"])
    )
    return True


init_gloo_process_group()
