"""vLLM general plugin: keeps vLLM's CPU linear layers reloadable, so verl can sync weights into them.

verl's weight sync (``vLLMColocateWorkerExtension.update_weights_from_ipc`` in
``verl/workers/rollout/vllm_rollout/utils.py``) calls ``model.load_weights`` on the running engine and
then vLLM's ``process_weights_after_loading``. On its CPU platform vLLM 0.27 prepacks each linear
layer's weight for oneDNN after loading and replaces ``layer.weight`` with an empty parameter
(``vllm/model_executor/layers/linear.py``, ``UnquantizedLinearMethod.process_weights_after_loading``
-> ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`` in ``vllm/model_executor/layers/utils.py``).
The next ``load_weights`` then finds no weight loader ("'Parameter' object has no attribute
'weight_loader'"). :func:`register` makes that dispatch keep ``layer.weight``: the sync loads into it
in place and the following ``process_weights_after_loading`` prepacks the new values. The cost is one
extra copy of the linear weights in host memory.

vLLM calls :func:`register` in each of its processes (entry point group ``vllm.general_plugins``); it
acts only in a verl run on the CPU platform (``VERL_PLATFORM=cpu``, as ``scripts/run_cpu_smoke.sh``
sets) with vLLM on its CPU platform.
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
