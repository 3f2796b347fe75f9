"""The verl places bnpo extends, checked before anything is patched, and the verl version bnpo is tested with.

Every extension of verl (``trainer_v1``, ``trainer_legacy``, ``trainer_separation``, ``checkpoint``) resolves the
attributes it needs through ``require`` first, so a verl that renamed one fails with ``VerlChanged`` naming the
place, before any of that module's patches is applied. A class that lost a method is also *gated*: its
``__init__`` refuses a bnpo / ad_bnpo config, so the process that trains stops at construction, not after
rollouts with no ``bnpo/*`` metrics.

Version policy: bnpo is tested with exactly ``TESTED_VERL``. Another version only warns, at start-up of a bnpo
run: what protects the run is that every place in ``PLACES`` is checked, which refuses a verl that changed
any of them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import logging
from typing import Any, Optional

from ..core.config import ESTIMATORS

logger = logging.getLogger(__name__)

TESTED_VERL = "0.9.1"

# module -> the attributes bnpo wraps or reads there (docs/verl.md, "What bnpo relies on in verl").
PLACES = {
    "verl.utils.config": ("validate_config",),
    "verl.trainer.ppo.core_algos": ("register_adv_est", "ADV_ESTIMATOR_REGISTRY"),
    "verl.trainer.ppo.v1.trainer_base": (
        "PPOTrainer._compute_advantage", "PPOTrainer._save_checkpoint", "PPOTrainer._load_checkpoint",
    ),
    "verl.trainer.ppo.ray_trainer": (
        "compute_advantage", "compute_data_metrics", "RayPPOTrainer.fit",
        "RayPPOTrainer._save_checkpoint", "RayPPOTrainer._load_checkpoint",
    ),
    "verl.experimental.separation.ray_trainer": ("SeparateRayPPOTrainer._fit_compute_advantage", "compute_advantage"),
    "verl.experimental.fully_async_policy.fully_async_trainer": ("FullyAsyncTrainer",),
}


class VerlChanged(RuntimeError):
    """A place bnpo extends is missing from the installed verl."""


def installed_verl() -> Optional[str]:
    try:
        return metadata.version("verl")
    except metadata.PackageNotFoundError:
        return None


def require(module: Any, dotted: str) -> Any:
    """``module.<dotted>`` (e.g. ``"PPOTrainer._compute_advantage"``), or VerlChanged naming the place."""
    value = module
    for part in dotted.split("."):
        if not hasattr(value, part):
            raise VerlChanged(
                f"bnpo cannot extend verl {installed_verl()}: {module.__name__}.{dotted} is missing (bnpo is tested "
                f"with verl {TESTED_VERL}, where it exists). Install verl=={TESTED_VERL}, or a bnpo release that "
                "supports your verl."
            )
        value = getattr(value, part)
    return value


def require_all(module: Any) -> dict[str, Any]:
    """Every place of ``PLACES`` in ``module``, resolved, or VerlChanged for the first missing one."""
    return {dotted: require(module, dotted) for dotted in PLACES[module.__name__]}


def uses_bnpo(config: Any) -> bool:
    algorithm = config.get("algorithm", None) if hasattr(config, "get") else None
    return algorithm is not None and algorithm.get("adv_estimator", None) in ESTIMATORS


def gate(cls: type, error: BaseException) -> None:
    """Make ``cls(config, ...)`` refuse a bnpo / ad_bnpo config with ``error`` (other estimators run as usual)."""
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        config = kwargs.get("config", args[0] if args else None)
        if uses_bnpo(config):
            raise VerlChanged(f"{cls.__module__}.{cls.__qualname__} cannot run algorithm.adv_estimator="
                              f"{config.algorithm.adv_estimator}: {error}") from error
        original(self, *args, **kwargs)

    cls.__init__ = __init__


def gate_classes(module: Any, error: BaseException) -> None:
    """Gate every class of ``PLACES[module]`` that still exists (the place that is missing may be a method)."""
    for dotted in PLACES[module.__name__]:
        owner = getattr(module, dotted.split(".")[0], None)
        cls = getattr(owner, "__ray_actor_class__", owner)  # a Ray actor's class behind its handle
        if isinstance(cls, type):
            gate(cls, error)


def check_version() -> None:
    """Warn when the installed verl is not the tested one (called at start-up of a bnpo run)."""
    version = installed_verl()
    if version != TESTED_VERL:
        logger.warning(
            "bnpo is tested with verl %s only; this is verl %s. bnpo checks at start-up that every verl place it "
            "extends is there, but their behaviour may have changed.", TESTED_VERL, version,
        )


def import_trainer_modules(config: Any) -> None:
    """Import the verl trainer modules a main_ppo run of ``config`` will use, so their hooks run (and fail) here."""
    trainer = config.get("trainer", None) or {}
    importlib.import_module("verl.trainer.ppo.ray_trainer")
    if trainer.get("use_v1", True):
        importlib.import_module("verl.trainer.ppo.v1.trainer_base")
