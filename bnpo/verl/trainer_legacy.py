"""bnpo in verl's legacy trainer (``trainer.use_v1=False``, ``RayPPOTrainer``).

The legacy trainer has no extension point: ``RayPPOTrainer.fit`` calls the module functions
``compute_advantage`` (which passes ``non_tensor_batch`` to gdpo only) and ``compute_data_metrics``
(whose result it logs every step). ``install`` wraps three things in ``verl.trainer.ppo.ray_trainer``:
- ``RayPPOTrainer.fit`` runs inside an estimator scope holding that trainer's pooled fits;
- ``compute_advantage``, for bnpo / ad_bnpo, publishes the batch's per-sample fields (the reward function's
  extra info) to the estimator, and hands its statistics to the enclosing scope (a trainer's step);
- ``compute_data_metrics`` adds the step's BNPO statistics to the metrics ``fit`` logs.
Other estimators pass through. ``RayPPOTrainer``'s checkpointing, which its subclasses inherit, also keeps
the pooled fits of ``fit_halflife`` (``bnpo.verl.checkpoint``).
"""

from __future__ import annotations

import functools
from types import ModuleType

from ..core.config import ESTIMATORS
from . import checkpoint, compat
from .context import current_scope, estimator_scope, fit_state_of


def wrap_compute_advantage(compute_advantage):
    """verl's ``compute_advantage(data, adv_estimator, ...)`` with the batch's fields published to bnpo's estimators."""
    if getattr(compute_advantage, "_bnpo_wrapped", False):
        return compute_advantage

    @functools.wraps(compute_advantage)
    def advantage_with_fields(data, adv_estimator, *args, **kwargs):
        if adv_estimator not in ESTIMATORS:
            return compute_advantage(data, adv_estimator, *args, **kwargs)
        outer = current_scope()  # a trainer's step (v1, fit, experimental), or None for a direct call
        fields = {**(outer.fields if outer else {}), **data.non_tensor_batch}
        with estimator_scope(outer.fit_state if outer else None, fields, outer.final_row if outer else None) as inner:
            result = compute_advantage(data, adv_estimator, *args, **kwargs)
        if outer is not None:
            outer.stats = inner.stats
        return result

    advantage_with_fields._bnpo_wrapped = True
    return advantage_with_fields


def install(ray_trainer: ModuleType) -> None:
    """Wrap ``compute_advantage``, ``compute_data_metrics`` and ``RayPPOTrainer.fit`` of verl's ``ray_trainer``
    module, and its checkpointing (idempotent; every place is checked before anything is patched)."""
    places = compat.require_all(ray_trainer)
    if getattr(places["compute_advantage"], "_bnpo_wrapped", False):
        return
    compute_data_metrics, fit = places["compute_data_metrics"], places["RayPPOTrainer.fit"]

    @functools.wraps(compute_data_metrics)
    def data_metrics_with_bnpo(*args, **kwargs):
        metrics = compute_data_metrics(*args, **kwargs)
        scope = current_scope()
        stats = scope.take_stats() if scope is not None else None
        return {**metrics, **stats.to_metrics()} if stats is not None else metrics

    @functools.wraps(fit)
    def fit_in_scope(self, *args, **kwargs):
        with estimator_scope(fit_state_of(self)):
            return fit(self, *args, **kwargs)

    checkpoint.install(ray_trainer.RayPPOTrainer)
    ray_trainer.RayPPOTrainer.fit = fit_in_scope
    ray_trainer.compute_data_metrics = data_metrics_with_bnpo
    ray_trainer.compute_advantage = wrap_compute_advantage(places["compute_advantage"])
