"""bnpo in verl's legacy trainer (``trainer.use_v1=False``, ``RayPPOTrainer``) and every subclass of it, the separated
trainers included. ``RayPPOTrainer`` has no extension point: its ``fit`` calls the module functions
``compute_advantage`` (passing ``non_tensor_batch`` to gdpo only) and ``compute_data_metrics``, so those are wrapped.
"""

from __future__ import annotations

import functools
from types import ModuleType

from ..core.config import ESTIMATORS
from . import compat, contract
from .context import current_run, current_scope, estimator_scope
from .metrics import metrics_of

ADVANTAGE = "verl.trainer.ppo.ray_trainer.compute_advantage"
DATA_METRICS = "verl.trainer.ppo.ray_trainer.compute_data_metrics"
SEPARATE_ADVANTAGE = "verl.experimental.separation.ray_trainer.SeparateRayPPOTrainer._fit_compute_advantage"


def wrap_compute_advantage(compute_advantage):
    """verl's ``compute_advantage``: in a legacy trainer's run, its advantage step, the metrics held for the step's
    ``compute_data_metrics``; elsewhere it hands the batch's fields to the estimator and the statistics to the scope."""

    @functools.wraps(compute_advantage)
    def advantage_with_fields(data, adv_estimator, *args, **kwargs):
        if adv_estimator not in ESTIMATORS:
            return compute_advantage(data, adv_estimator, *args, **kwargs)
        outer, trainer = current_scope(), current_run()
        if outer is None and trainer is not None:  # the legacy trainer's step
            with contract.advantage_step(trainer, "legacy", ADVANTAGE, fields=data.non_tensor_batch) as step:
                result = compute_advantage(data, adv_estimator, *args, **kwargs)
            contract.hold_metrics(trainer, step.metrics)
            return result
        # a separated trainer's advantage step, a caller's own scope, or a direct call (no statistics)
        fields = {**(outer.fields if outer else {}), **data.non_tensor_batch}
        with estimator_scope(fields, outer.final_row if outer else None) as inner:
            result = compute_advantage(data, adv_estimator, *args, **kwargs)
        if outer is not None:
            outer.stats = inner.stats
        return result

    return advantage_with_fields


def wrap_compute_data_metrics(compute_data_metrics):
    """verl's ``compute_data_metrics`` with the step's bnpo metrics."""

    @functools.wraps(compute_data_metrics)
    def data_metrics_with_bnpo(*args, **kwargs):
        metrics = compute_data_metrics(*args, **kwargs)
        trainer = current_run()
        if trainer is not None and compat.uses_bnpo(trainer.config):
            return {**metrics, **contract.take_held_metrics(trainer, DATA_METRICS)}
        scope = current_scope()  # a caller's own scope around compute_advantage and this call
        stats = scope.take_stats() if scope is not None else None
        return {**metrics, **metrics_of(stats)} if stats is not None else metrics

    return data_metrics_with_bnpo


def wrap_fit_compute_advantage(original):
    """``SeparateRayPPOTrainer._fit_compute_advantage`` as the advantage step, its metrics in ``self.metrics``."""

    @functools.wraps(original)
    def _fit_compute_advantage(self, batch):
        if not compat.uses_bnpo(self.config):
            return original(self, batch)
        with contract.advantage_step(self, contract.legacy_kind(self), SEPARATE_ADVANTAGE) as step:
            batch = original(self, batch)
        self.metrics.update(step.metrics)
        return batch

    return _fit_compute_advantage


def _extend_class(cls: type) -> None:
    """What ``cls`` defines itself: its ``fit`` runs as the trainer's run, its ``__init__`` checks a bnpo run first."""
    if "fit" in cls.__dict__:
        compat.patch(cls, "fit", contract.fit_in_run)
    if "__init__" in cls.__dict__:
        contract.check_at_construction(cls, contract.legacy_kind)


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _extend_subclasses(base: type) -> None:
    """Extend every subclass of ``base``, and through ``__init_subclass__`` those defined later (one_step_off's)."""
    for cls in _subclasses(base):
        _extend_class(cls)
    previous = base.__dict__.get("__init_subclass__")
    previous = getattr(previous, "__func__", previous)
    original = getattr(previous, "_bnpo_original", previous)  # verl's own, if it ever defines one

    def __init_subclass__(cls, **kwargs):
        if original is not None:
            original(cls, **kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        _extend_class(cls)

    __init_subclass__._bnpo_original = original
    base.__init_subclass__ = classmethod(__init_subclass__)


def install(ray_trainer: ModuleType) -> None:
    """Extend verl's ``ray_trainer`` module (every place is checked before anything is patched)."""
    compat.require_all(ray_trainer)
    base = ray_trainer.RayPPOTrainer
    _extend_class(base)
    _extend_subclasses(base)
    compat.patch(ray_trainer, "compute_data_metrics", wrap_compute_data_metrics)
    compat.patch(ray_trainer, "compute_advantage", wrap_compute_advantage)


def install_separation(separation: ModuleType) -> None:
    """Extend ``verl.experimental.separation.ray_trainer``: ``_fit_compute_advantage`` and ``compute_advantage``."""
    compat.require_all(separation)
    compat.patch(separation.SeparateRayPPOTrainer, "_fit_compute_advantage", wrap_fit_compute_advantage)
    compat.patch(separation, "compute_advantage", wrap_compute_advantage)


def install_fully_async(fully_async_trainer: ModuleType) -> None:
    """Extend ``FullyAsyncTrainer`` (a Ray actor: its class behind the handle) as any subclass."""
    actor = compat.require_all(fully_async_trainer)["FullyAsyncTrainer"]
    _extend_class(getattr(actor, "__ray_actor_class__", actor))
