"""CPU rollout backend for verl: transformers ``generate`` behind verl's rollout registries.

A development and testing backend that lets ``python -m verl.trainer.main_ppo`` run end to end on a
machine without GPUs (see ``scripts/run_cpu_smoke.sh``). Not a speed path. Importing this module
registers, without changing any default:

* ``VERL_PLATFORM=cpu`` — a verl platform whose device is ``cpu`` and whose collectives use ``gloo``;
* ``actor_rollout_ref.rollout.name=hf_cpu`` — a rollout replica (``RolloutReplicaRegistry``) and its
  in-worker adapter (verl's rollout class table) that generate with transformers on the CPU.

Every verl process must import it (driver, TaskRunner, workers, agent loop workers): the
``bnpo.verl_plugin`` entry point does, or ``VERL_USE_EXTERNAL_MODULES=bnpo.cpu_rollout``.
"""

from __future__ import annotations

ROLLOUT_NAME = "hf_cpu"
_ADAPTER_FQN = "bnpo.cpu_rollout.replica.CPUServerAdapter"


def _load_replica():
    from .replica import CPUReplica

    return CPUReplica


def register() -> None:
    """Register the CPU platform and the ``hf_cpu`` rollout with verl (idempotent)."""
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from .platform import register_platform

    register_platform()
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    # verl 0.9.1 has no public registration call for in-worker rollout classes; its table is a dict
    # keyed by (name, mode), which accepts a new entry without changing the existing ones.
    rollout_base._ROLLOUT_REGISTRY.setdefault((ROLLOUT_NAME, "async"), _ADAPTER_FQN)


register()
