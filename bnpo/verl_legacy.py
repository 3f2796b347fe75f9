"""bnpo in verl's legacy trainer (``trainer.use_v1=False``, ``RayPPOTrainer``).

The legacy trainer has no extension point: ``RayPPOTrainer.fit`` calls the module functions
``compute_advantage`` (which passes ``non_tensor_batch`` to gdpo only) and ``compute_data_metrics``
(whose result it logs every step). ``install`` wraps both in ``verl.trainer.ppo.ray_trainer``: for
bnpo / ad_bnpo the batch's per-sample fields (the reward function's extra info) are published to the
estimator, and the step's BNPO statistics are added to the logged metrics. Other estimators pass through.
``RayPPOTrainer``'s checkpointing also keeps the pooled fits of ``fit_halflife`` (``bnpo.verl_checkpoint``).
"""

from __future__ import annotations

import functools
from types import ModuleType

from . import verl_checkpoint
from .stats import pop_last_stats
from .verl_batch import current_batch, providing
from .verl_estimators import ESTIMATORS


def install(ray_trainer: ModuleType) -> None:
    """Wrap ``compute_advantage`` and ``compute_data_metrics`` of verl's ``ray_trainer`` module (idempotent)."""
    if getattr(ray_trainer.compute_advantage, "_bnpo_wrapped", False):
        return
    compute_advantage = ray_trainer.compute_advantage
    compute_data_metrics = ray_trainer.compute_data_metrics

    @functools.wraps(compute_advantage)
    def advantage_with_fields(data, adv_estimator, *args, **kwargs):
        if adv_estimator not in ESTIMATORS:
            return compute_advantage(data, adv_estimator, *args, **kwargs)
        # verl's v1 trainer calls this function too, inside bnpo.verl_trainer's context: keep what it published
        outer = current_batch()
        fields = {**(outer.fields if outer else {}), **data.non_tensor_batch}
        with providing(fields, outer.final_row if outer else None):
            return compute_advantage(data, adv_estimator, *args, **kwargs)

    @functools.wraps(compute_data_metrics)
    def data_metrics_with_bnpo(*args, **kwargs):
        metrics = compute_data_metrics(*args, **kwargs)
        stats = pop_last_stats()
        return {**metrics, **stats.to_metrics()} if stats is not None else metrics

    verl_checkpoint.install(ray_trainer.RayPPOTrainer)
    advantage_with_fields._bnpo_wrapped = True
    ray_trainer.compute_advantage = advantage_with_fields
    ray_trainer.compute_data_metrics = data_metrics_with_bnpo
