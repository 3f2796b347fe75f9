"""Creates a verl training worker's default process group over gloo on a CPU platform.

Import it through ``actor_rollout_ref.model.external_lib=bnpo_cpu_e2e.process_group``: verl
imports that module inside each training worker (``HFModelConfig.__post_init__``) before the FSDP
engine is built. Why it is needed: ``verl.utils.distributed.initialize_global_process_group_ray``
(verl 0.9.1) asks torch for the backend ``"cpu:gloo,<device>:<backend>"``, which on a CPU platform
reads ``"cpu:gloo,cpu:gloo"`` and torch rejects the duplicate device. verl skips that call when a
default group already exists, so creating the same group here — plain ``gloo``, from the rank,
world size and master address verl's worker group put in the environment — lets the run go on.

Outside a verl worker-group actor on the CPU platform (the driver, the TaskRunner, rollout and
reward actors also build model configs) importing this module does nothing.
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
