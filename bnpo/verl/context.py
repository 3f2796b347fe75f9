"""What an advantage step shares between a verl trainer and bnpo's estimators beyond verl's arguments (tensors and
uids, no way to return statistics): an ``EstimatorScope`` in a context variable, so each thread and trainer sees its
own. Never imports verl."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ContextManager, Optional

import numpy as np

from ..core.stats import BNPOStats


@dataclass
class EstimatorScope:
    """fields: per-sample (bs,) values by key (the reward function's extra info). final_row: (bs,) row of each sample's
    session's final output, or None when every session has one output. stats: left by the last bnpo / ad_bnpo
    estimator call in the scope, else None."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    final_row: Optional[np.ndarray] = None
    stats: Optional[BNPOStats] = None

    def take_stats(self) -> Optional[BNPOStats]:
        """The statistics left by the last estimator call, cleared so a later step cannot log them again."""
        stats, self.stats = self.stats, None
        return stats


_SCOPE: ContextVar[Optional[EstimatorScope]] = ContextVar("bnpo_estimator_scope", default=None)
_RUN: ContextVar[Optional[Any]] = ContextVar("bnpo_trainer_run", default=None)


@contextmanager
def _set(var: ContextVar, value: Any) -> Iterator[Any]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def estimator_scope(fields: Optional[Mapping[str, Any]] = None,
                    final_row: Optional[np.ndarray] = None) -> ContextManager[EstimatorScope]:
    """A scope for bnpo's estimators called inside the block, through verl or directly::

        with bnpo.verl.estimator_scope() as scope:
            data = compute_advantage(data, adv_estimator="bnpo", ...)
        scope.stats.to_metrics()
    """
    return _set(_SCOPE, EstimatorScope(dict(fields or {}), final_row))


def current_scope() -> Optional[EstimatorScope]:
    """The innermost open scope, or None outside any."""
    return _SCOPE.get()


def trainer_run(trainer: Any) -> ContextManager[Any]:
    """Mark the block as ``trainer``'s training loop: estimator calls inside it belong to that trainer's steps."""
    return _set(_RUN, trainer)


def current_run() -> Optional[Any]:
    """The trainer whose training loop is running here (None outside any, or in a trainer bnpo does not wrap)."""
    return _RUN.get()
