"""bnpo in verl's experimental separated trainers: one_step_off_policy and fully_async_policy.

Both derive from ``SeparateRayPPOTrainer`` (``verl/experimental/separation/ray_trainer.py``), whose
``fit_step`` calls ``self._fit_compute_advantage(batch)`` once per step and logs ``self.metrics``; its module
imported verl's ``compute_advantage`` by name and calls ``compute_data_metrics`` from ``metric_utils``, which
the legacy extension's wraps do not reach. ``install`` wraps ``_fit_compute_advantage``: for bnpo / ad_bnpo it is
the trainer's advantage step of bnpo's trainer contract (``bnpo.verl.contract``: per-run check, scope, required
statistics), and the step's metrics go into ``self.metrics``; the module's ``compute_advantage`` gets the legacy
wrap, which hands ad_bnpo the reward components verl put in ``non_tensor_batch``. The trainers' own ``fit`` runs as
the trainer's run (``bnpo.verl.trainer_legacy``: they derive from ``RayPPOTrainer``). Checkpoints: one_step_off_policy saves through
``RayPPOTrainer._save_checkpoint`` (extended by ``bnpo.verl.checkpoint``); fully_async saves its own way and
refuses ``fit_halflife`` (``bnpo.verl.trainer_fully_async``).
"""

from __future__ import annotations

import functools
from types import ModuleType

from . import compat, contract
from .trainer_legacy import wrap_compute_advantage

ADVANTAGE = "verl.experimental.separation.ray_trainer.SeparateRayPPOTrainer._fit_compute_advantage"


def extend(original):
    @functools.wraps(original)
    def _fit_compute_advantage(self, batch):
        if not compat.uses_bnpo(self.config):
            return original(self, batch)
        with contract.advantage_step(self, contract.legacy_kind(self), ADVANTAGE) as step:
            batch = original(self, batch)
        self.metrics.update(step.metrics)
        return batch

    return _fit_compute_advantage


def install(separation: ModuleType) -> None:
    """Wrap ``SeparateRayPPOTrainer._fit_compute_advantage`` and the module's ``compute_advantage``."""
    compat.require_all(separation)  # every place, before anything is patched
    compat.patch(separation.SeparateRayPPOTrainer, "_fit_compute_advantage", extend)
    compat.patch(separation, "compute_advantage", wrap_compute_advantage)
