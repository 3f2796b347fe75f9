"""vLLM general plugin: keeps vLLM's CPU linear layers reloadable, so verl can sync weights into them.

On its CPU platform vLLM 0.27 prepacks each linear layer's weight for oneDNN and replaces ``layer.weight`` with an
empty parameter, so verl's next ``model.load_weights`` fails ("'Parameter' object has no attribute 'weight_loader'";
docs/cpu-e2e.md gives the files). :func:`register` makes the dispatch keep ``layer.weight`` (one extra host copy):
the sync loads into it and vLLM prepacks the new values. vLLM calls it in each of its processes (entry point
``vllm.general_plugins``); it acts only with ``VERL_PLATFORM=cpu`` and vLLM on its CPU platform.
"""

from __future__ import annotations

import functools
import os


def _keep_weight(dispatch):
    @functools.wraps(dispatch)
    def dispatch_keeping_weight(layer, remove_weight: bool):
        return dispatch(layer, remove_weight=False)

    dispatch_keeping_weight.bnpo_keeps_weight = True
    return dispatch_keeping_weight


def register() -> bool:
    """Patch vLLM's CPU GEMM dispatch (idempotent); returns whether it is in effect."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.model_executor.layers import utils

    # linear.py imports the function from this module at each call, so replacing the attribute is enough.
    if not getattr(utils.dispatch_cpu_unquantized_gemm, "bnpo_keeps_weight", False):
        utils.dispatch_cpu_unquantized_gemm = _keep_weight(utils.dispatch_cpu_unquantized_gemm)
    return True
