"""Registers ``bnpo`` and ``ad_bnpo`` with verl and extends verl's trainers.

Imported by verl itself in every process that runs ``import verl`` (driver, TaskRunner actor, Ray
workers) through the ``verl.plugins`` entry point (verl >= 0.9), or through
``VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin`` on older verl. verl hides a plugin's import errors
(debug log), so nothing here raises: a failure is logged as a warning and recorded (``LOAD_ERROR`` for the
registration, ``bnpo.verl.hooks.FAILED`` for a trainer extension), and the start-up check of a bnpo /
ad_bnpo run (``bnpo.verl.startup``) stops that run with it. Runs of other estimators are untouched.

The top of bnpo's verl layer: it imports the others, none imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Optional

from . import compat
from .estimators import ESTIMATOR_FUNCTIONS
from .hooks import when_imported

logger = logging.getLogger(__name__)

LOAD_ERROR: Optional[BaseException] = None


def _register_estimators() -> None:
    import verl.trainer.ppo.core_algos as core_algos

    register = compat.require(core_algos, "register_adv_est")
    for name, fn in ESTIMATOR_FUNCTIONS.items():
        register(name)(fn)


def _extension(install_name: str) -> Callable[[ModuleType], None]:
    """The hook that extends a verl module with ``bnpo.verl.<install_name>.install``; if it cannot, the module's
    classes are gated (they refuse bnpo runs at construction) and the error is re-raised for the hook to record."""

    def extend(module: ModuleType) -> None:
        import importlib

        try:
            importlib.import_module(f"bnpo.verl.{install_name}").install(module)
        except Exception as err:
            compat.gate_classes(module, err)
            raise

    return extend


# verl module -> the bnpo module that extends it (each only where a process imports it: they are heavy)
EXTENSIONS = {
    "verl.trainer.ppo.v1.trainer_base": "trainer_v1",
    "verl.trainer.ppo.ray_trainer": "trainer_legacy",
    "verl.experimental.separation.ray_trainer": "trainer_separation",
    "verl.experimental.fully_async_policy.fully_async_trainer": "trainer_fully_async",
}


def _install_trainer_hooks() -> None:
    from .startup import install_startup_check

    install_startup_check(lambda: LOAD_ERROR)
    for module_name, install_name in EXTENSIONS.items():
        when_imported(module_name, _extension(install_name))


def _load() -> None:
    global LOAD_ERROR
    # the check first: it reports a failed registration
    for step in (_install_trainer_hooks, _register_estimators):
        try:
            step()
        except Exception as err:
            LOAD_ERROR = LOAD_ERROR or err
            logger.warning(
                "bnpo: the verl plugin failed (%s: %s); algorithm.adv_estimator=bnpo/ad_bnpo will not work in this "
                "process. Reinstall bnpo next to verl %s.", type(err).__name__, err, compat.TESTED_VERL, exc_info=True
            )


_load()
