"""Registers ``bnpo`` and ``ad_bnpo`` with verl and extends verl's trainers, loaded in every process that imports verl.

verl hides a plugin's import errors, so nothing here raises: each part that fails is recorded in
``bnpo.verl.hooks.FAILED``, which stops bnpo's runs. Importing it again replaces its registration and wrappers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import compat, hooks
from .estimators import ESTIMATOR_FUNCTIONS
from .startup import install_startup_check

# verl module -> what extends it (each only where a process imports it: they are heavy)
EXTENSIONS = {
    "verl.trainer.ppo.v1.trainer_base": "trainer_v1:install",
    "verl.trainer.ppo.ray_trainer": "trainer_legacy:install",
    "verl.experimental.separation.ray_trainer": "trainer_legacy:install_separation",
    "verl.experimental.fully_async_policy.fully_async_trainer": "trainer_legacy:install_fully_async",
}


def _ours(found: Any, fn: Any) -> bool:
    """``found`` is bnpo's ``fn`` (from an earlier import of this plugin, or the same object)."""
    name = (getattr(found, "__module__", None), getattr(found, "__qualname__", None))
    return name == (fn.__module__, fn.__qualname__)


def _register_estimators() -> None:
    import verl.trainer.ppo.core_algos as core_algos

    register = compat.require(core_algos, "register_adv_est")
    registry = compat.require(core_algos, "ADV_ESTIMATOR_REGISTRY")
    for name, fn in ESTIMATOR_FUNCTIONS.items():
        if name in registry and _ours(registry[name], fn):
            del registry[name]  # verl refuses a second function under one name, even bnpo's own reloaded one
        register(name)(fn)


def _extension(install: str) -> Callable[[ModuleType], None]:
    """The hook extending a verl module with ``bnpo.verl.<install>``; where that fails, its classes refuse bnpo runs."""
    module_name, function = install.split(":")

    def extend(module: ModuleType) -> None:
        try:
            getattr(importlib.import_module(f"bnpo.verl.{module_name}"), function)(module)
        except Exception as err:
            compat.gate_classes(module, err)
            raise

    return extend


def _load() -> None:
    # the check first: it reports what fails after it
    for place, step in (("verl.utils.config.validate_config", install_startup_check),
                        ("verl.trainer.ppo.core_algos.register_adv_est", _register_estimators)):
        try:
            step()
        except Exception as err:
            hooks.record(place, err)
    for module_name, install in EXTENSIONS.items():
        hooks.when_imported(module_name, _extension(install))


_load()
