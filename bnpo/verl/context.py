"""What one advantage step shares between a verl trainer and bnpo's estimators, beyond verl's arguments.

verl hands estimators tensors and uids only: no ``non_tensor_batch`` (but to gdpo), no agent-loop sessions, no way to
return statistics or reach state across steps. bnpo's trainer integration opens an ``EstimatorScope`` around verl's
advantage step with all of it. A scope is a context variable (other threads and trainers see their own), and pooled
fits live on the trainer object: two trainers in one process share nothing. Pure Python; never imports verl.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ContextManager, Optional

import numpy as np

from ..core.pooling import FitState
from ..core.stats import BNPOStats


@dataclass
class EstimatorScope:
    """fields: per-sample values by key ((bs,) arrays: the reward function's extra info).
    final_row: (bs,) row of each sample's session's final output, or None when every session has one output.
    fit_state: the run's pooled fits (``algorithm.bnpo.fit_halflife``), or None.
    stats: set by the bnpo / ad_bnpo estimator called in the scope (the last call's), else None.
    """

    fields: Mapping[str, Any] = field(default_factory=dict)
    final_row: Optional[np.ndarray] = None
    fit_state: Optional[FitState] = None
    stats: Optional[BNPOStats] = None

    def take_stats(self) -> Optional[BNPOStats]:
        """The statistics left by the last estimator call, cleared so a later step cannot log them again."""
        stats, self.stats = self.stats, None
        return stats


_SCOPE: ContextVar[Optional[EstimatorScope]] = ContextVar("bnpo_estimator_scope", default=None)
# The verl trainer whose training loop (``fit``) is running in this context, if bnpo extends it (bnpo.verl.contract).
_RUN: ContextVar[Optional[Any]] = ContextVar("bnpo_trainer_run", default=None)


@contextmanager
def _set(var: ContextVar, value: Any) -> Iterator[Any]:
    """``var`` is ``value`` inside the block (and in what it calls), its previous value after."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def estimator_scope(
    fit_state: Optional[FitState] = None,
    fields: Optional[Mapping[str, Any]] = None,
    final_row: Optional[np.ndarray] = None,
) -> ContextManager[EstimatorScope]:
    """Open a scope for bnpo's estimators called inside the block (through verl or directly).

    Use it to call verl's ``compute_advantage`` / the registered estimator yourself and read the statistics::

        with bnpo.verl.estimator_scope(fit_state) as scope:
            data = compute_advantage(data, adv_estimator="bnpo", ...)
        scope.stats.to_metrics()
    """
    return _set(_SCOPE, EstimatorScope(dict(fields or {}), final_row, fit_state))


def current_scope() -> Optional[EstimatorScope]:
    """The innermost open scope, or None outside any."""
    return _SCOPE.get()


_FIT_STATE_ATTRIBUTE = "_bnpo_fit_state"


def fit_state_of(trainer: Any) -> FitState:
    """The pooled fits of ``trainer`` (created on first use), kept on the trainer object itself."""
    state = getattr(trainer, _FIT_STATE_ATTRIBUTE, None)
    if state is None:
        state = FitState()
        setattr(trainer, _FIT_STATE_ATTRIBUTE, state)
    return state


def trainer_run(trainer: Any) -> ContextManager[Any]:
    """Mark the block as ``trainer``'s training loop: estimator calls inside it belong to that trainer's steps."""
    return _set(_RUN, trainer)


def current_run() -> Optional[Any]:
    """The trainer whose training loop is running here (None outside any, or in a trainer bnpo does not wrap)."""
    return _RUN.get()
