"""The verl places bnpo extends (resolved through ``require`` before anything is patched, so a verl that renamed one
fails naming it), the verl versions it supports, and the trainer modules each run needs."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Optional

from ..core.config import ESTIMATORS

logger = logging.getLogger(__name__)

TESTED_VERL = "0.9.1"  # the recipe's and the CPU runs'
SUPPORTED_VERL = ">=0.9.0,<0.10"
MAIN_VERL = "0.10.0"  # the release upstream main develops: its dev and pre-release builds are supported, not itself
ALLOW_UNSUPPORTED = "BNPO_ALLOW_UNSUPPORTED_VERL"
INSTALL_SUPPORTED = "pip install 'verl[verl-core]>=0.9.0,<0.10'"

# module -> the attributes bnpo wraps or reads there (docs/verl.md, "What bnpo relies on in verl").
PLACES = {
    "verl.utils.config": ("validate_config",),
    "verl.trainer.ppo.core_algos": ("register_adv_est", "ADV_ESTIMATOR_REGISTRY"),
    "verl.trainer.ppo.v1.trainer_base": ("PPOTrainer._compute_advantage",),
    "verl.trainer.ppo.ray_trainer": ("compute_advantage", "compute_data_metrics", "RayPPOTrainer.fit"),
    "verl.experimental.separation.ray_trainer": ("SeparateRayPPOTrainer._fit_compute_advantage", "compute_advantage"),
    "verl.experimental.fully_async_policy.fully_async_trainer": ("FullyAsyncTrainer",),
}

# The trainer a run selects -> the verl modules bnpo extends for it, hooked by name (bnpo.verl.hooks): a module verl
# moved would leave its trainer unextended, so the start-up check imports these names.
TRAINER_MODULES = {
    "v1": ("verl.trainer.ppo.v1.trainer_base",),
    "legacy": ("verl.trainer.ppo.ray_trainer",),
    "one_step_off_policy": ("verl.trainer.ppo.ray_trainer", "verl.experimental.separation.ray_trainer"),
    "fully_async_policy": (
        "verl.trainer.ppo.ray_trainer", "verl.experimental.separation.ray_trainer",
        "verl.experimental.fully_async_policy.fully_async_trainer",
    ),
}


class VerlChanged(RuntimeError):
    """A place bnpo extends is missing from the installed verl, or the installed verl is not supported."""


def installed_verl() -> Optional[str]:
    """The version of the verl this process runs (``verl.__version__``: also right for a source checkout)."""
    version = getattr(sys.modules.get("verl"), "__version__", None)
    try:
        return str(version) if version else metadata.version("verl")
    except metadata.PackageNotFoundError:
        return None


def is_supported(version: Optional[str]) -> bool:
    """``version`` in ``SUPPORTED_VERL`` (pre-releases included), or a dev / pre-release build of ``MAIN_VERL``
    (0.10.0.dev0, 0.10.0.dev20261201, 0.10.0a2, 0.10.0rc1), compared as versions; not a final ``MAIN_VERL``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(str(version))
    except InvalidVersion:
        return False
    # X.Y.Z.dev0 is X.Y.Z's earliest build; not SpecifierSet("<X.Y.Z"), which keeps X.Y.Z's pre-releases out (PEP 440)
    main = Version(MAIN_VERL)
    return SpecifierSet(SUPPORTED_VERL).contains(parsed, prereleases=True) or Version(f"{main}.dev0") <= parsed < main


def supported_text() -> str:
    return f"verl {SUPPORTED_VERL} and upstream main ({MAIN_VERL} dev and pre-release builds)"


def require(module: Any, dotted: str) -> Any:
    """``module.<dotted>`` (e.g. ``"PPOTrainer._compute_advantage"``), or VerlChanged naming the place."""
    try:
        return functools.reduce(getattr, dotted.split("."), module)
    except AttributeError:
        raise VerlChanged(
            f"bnpo cannot extend verl {installed_verl()}: {module.__name__}.{dotted} is missing (bnpo supports "
            f"{supported_text()}, where it exists). Install a supported verl ({INSTALL_SUPPORTED}), or a bnpo "
            "release that supports your verl."
        ) from None


def require_all(module: Any) -> dict[str, Any]:
    """Every place of ``PLACES`` in ``module``, resolved, or VerlChanged for the first missing one."""
    return {dotted: require(module, dotted) for dotted in PLACES[module.__name__]}


def uses_bnpo(config: Any) -> bool:
    algorithm = config.get("algorithm", None) if hasattr(config, "get") else None
    return algorithm is not None and algorithm.get("adv_estimator", None) in ESTIMATORS


def patch(owner: Any, attribute: str, make_wrapper: Callable[[Any], Any]) -> Any:
    """Set ``owner.<attribute>`` to ``make_wrapper(verl's original)``: patching again replaces bnpo's wrapper."""
    current = getattr(owner, attribute)
    original = getattr(current, "_bnpo_original", current)
    wrapper = make_wrapper(original)
    wrapper._bnpo_original = original
    wrapper._bnpo_wrapped = True
    setattr(owner, attribute, wrapper)
    return wrapper


def check_before_init(cls: type, check: Callable[[Any, Any], None]) -> None:
    """Make ``cls(config, ...)`` call ``check(self, config)`` before its ``__init__`` for a bnpo / ad_bnpo config."""

    def wrap(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            config = kwargs.get("config", args[0] if args else None)
            if uses_bnpo(config):
                check(self, config)
            original(self, *args, **kwargs)

        return __init__

    patch(cls, "__init__", wrap)


def gate_classes(module: Any, error: BaseException) -> None:
    """Make each class of ``PLACES[module]`` that still exists refuse a bnpo / ad_bnpo config with ``error``."""

    def refuse(name, self, config):
        estimator = config.algorithm.adv_estimator
        raise VerlChanged(f"{name} cannot run algorithm.adv_estimator={estimator}: {error}") from error

    for dotted in PLACES[module.__name__]:
        owner = getattr(module, dotted.split(".")[0], None)
        cls = getattr(owner, "__ray_actor_class__", owner)  # a Ray actor's class behind its handle
        if isinstance(cls, type):
            check_before_init(cls, functools.partial(refuse, f"{cls.__module__}.{cls.__qualname__}"))


def check_version() -> None:
    """Refuse a verl outside the supported versions (called at the start-up of a bnpo run)."""
    version = installed_verl()
    if is_supported(version):
        return
    message = (f"bnpo supports {supported_text()}; this is verl {version}. Install a supported verl "
               f"({INSTALL_SUPPORTED}, or pip install '.[verl]' in a bnpo checkout), or a bnpo release that supports "
               "your verl")
    if os.environ.get(ALLOW_UNSUPPORTED, "").strip().lower() in ("1", "true", "yes", "on"):
        logger.warning("%s. %s is set: going on; bnpo checks every verl place it extends, but not their behaviour.",
                       message, ALLOW_UNSUPPORTED)
        return
    raise VerlChanged(f"{message}. To try this verl anyway, set {ALLOW_UNSUPPORTED}=1.")


def selected_trainer(config: Any) -> str:
    """The trainer a run of ``config`` uses, from the sections of its entry point's config."""
    if config.get("async_training", None) is not None:
        return "fully_async_policy"
    if config.get("rollout", None) is not None:
        return "one_step_off_policy"
    return "v1" if (config.get("trainer", None) or {}).get("use_v1", True) else "legacy"


def import_trainer_modules(trainer: str) -> None:
    """Import the verl modules ``trainer`` extends under the names bnpo hooks, so their hooks run (and fail) here."""
    for name in TRAINER_MODULES[trainer]:
        try:
            importlib.import_module(name)
        except ImportError as err:
            moved = err.name is not None and (name == err.name or name.startswith(err.name + "."))
            why = "verl moved or renamed it" if moved else "one of its imports failed"
            raise VerlChanged(
                f"bnpo extends verl's {name} for the {trainer} trainer, but it does not import under that name "
                f"({type(err).__name__}: {err}; {why}). bnpo hooks the module by its name, so this trainer would run "
                f"without bnpo's extension. bnpo supports {supported_text()} ({INSTALL_SUPPORTED})."
            ) from err
