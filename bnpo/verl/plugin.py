"""Registers ``bnpo`` and ``ad_bnpo`` with verl and extends verl's trainers.

Imported by verl itself in every process that runs ``import verl`` (driver, TaskRunner actor, Ray
workers) through the ``verl.plugins`` entry point (verl >= 0.9), or through
``VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin``. verl hides a plugin's import errors (debug log), so nothing here
raises: each part that fails (the start-up check's wrap of ``validate_config``, the registration, a trainer
extension when its module is imported) is logged as a warning and recorded with its verl place in
``bnpo.verl.hooks.FAILED``. While anything is recorded, bnpo's estimators raise with it and the start-up check of a
bnpo / ad_bnpo run stops with it: a half-installed plugin never trains. Runs of other estimators are untouched.

Importing the plugin a second time (a reloaded module) replaces its own registration and wrappers: no "already
registered" error, no wrapper around a wrapper.

The top of bnpo's verl layer: it imports the others, none imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Optional

from . import compat, hooks
from .estimators import ESTIMATOR_FUNCTIONS
from .hooks import when_imported
from .startup import install_startup_check


def _ours(found: Any, fn: Any) -> bool:
    """``found`` is bnpo's ``fn`` (from an earlier import of this plugin, or the same object)."""
    return getattr(found, "__module__", None) == fn.__module__ and getattr(found, "__qualname__", None) == fn.__qualname__


def _register_estimators() -> None:
    import verl.trainer.ppo.core_algos as core_algos

    register = compat.require(core_algos, "register_adv_est")
    registry = compat.require(core_algos, "ADV_ESTIMATOR_REGISTRY")
    for name, fn in ESTIMATOR_FUNCTIONS.items():
        if name in registry and _ours(registry[name], fn):
            del registry[name]  # verl refuses a second function under one name, even bnpo's own reloaded one
        register(name)(fn)


def _extension(install_name: str) -> Callable[[ModuleType], None]:
    """The hook that extends a verl module with ``bnpo.verl.<install_name>.install``; if it cannot, the module's
    classes are gated (they refuse bnpo runs at construction) and the error is re-raised for the hook to record."""

    def extend(module: ModuleType) -> None:
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


def _load() -> Optional[BaseException]:
    # the check first: it reports what fails after it
    for place, step in (("verl.utils.config.validate_config", install_startup_check),
                        ("verl.trainer.ppo.core_algos.register_adv_est", _register_estimators)):
        try:
            step()
        except Exception as err:
            hooks.record(place, err)
    for module_name, install_name in EXTENSIONS.items():
        when_imported(module_name, _extension(install_name))
    return next(iter(hooks.FAILED.values()), None)


# The first failure of the plugin in this process (bnpo 0.1's name; bnpo.verl.hooks.FAILED has every one).
LOAD_ERROR: Optional[BaseException] = _load()
