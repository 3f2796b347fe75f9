"""bnpo in verl's experimental separated trainers: one_step_off_policy and fully_async_policy.

Both derive from ``SeparateRayPPOTrainer`` (``verl/experimental/separation/ray_trainer.py``), whose
``fit_step`` calls ``self._fit_compute_advantage(batch)`` once per step and logs ``self.metrics``; its module
imported verl's ``compute_advantage`` by name and calls ``compute_data_metrics`` from ``metric_utils``, which
the legacy extension's wraps do not reach. ``install`` wraps ``_fit_compute_advantage``: for bnpo / ad_bnpo
it runs inside an estimator scope holding that trainer's pooled fits, and the step's BNPO statistics go into
``self.metrics``; the module's ``compute_advantage`` gets the legacy wrap, which hands ad_bnpo the reward
components verl put in ``non_tensor_batch``. Checkpoints: one_step_off_policy saves through
``RayPPOTrainer._save_checkpoint`` (extended by ``bnpo.verl.checkpoint``); fully_async saves its own way and
refuses ``fit_halflife`` (``bnpo.verl.trainer_fully_async``).
"""

from __future__ import annotations

import functools
from types import ModuleType

from ..core.config import ESTIMATORS
from . import compat
from .context import estimator_scope, fit_state_of, required_stats
from .startup import check_run_config
from .trainer_legacy import wrap_compute_advantage


def install(separation: ModuleType) -> None:
    """Wrap ``SeparateRayPPOTrainer._fit_compute_advantage`` and the module's ``compute_advantage`` (idempotent)."""
    places = compat.require_all(separation)
    original = places["SeparateRayPPOTrainer._fit_compute_advantage"]
    if getattr(original, "_bnpo_wrapped", False):
        return

    @functools.wraps(original)
    def _fit_compute_advantage(self, batch):
        estimator = self.config.algorithm.adv_estimator
        if estimator not in ESTIMATORS:
            return original(self, batch)
        check_run_config(self.config, startup=False)
        with estimator_scope(fit_state_of(self)) as scope:
            batch = original(self, batch)
        self.metrics.update(required_stats(scope, estimator).to_metrics())
        return batch

    _fit_compute_advantage._bnpo_wrapped = True
    separation.SeparateRayPPOTrainer._fit_compute_advantage = _fit_compute_advantage
    separation.compute_advantage = wrap_compute_advantage(places["compute_advantage"])
