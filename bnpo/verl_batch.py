"""What bnpo's trainer integration knows about the batch beyond the estimator's arguments.

verl calls estimators with tensors and uids only: ``compute_advantage`` passes ``non_tensor_batch`` to no
estimator but gdpo, and nothing says which outputs belong to one agent-loop session. The integration
(``bnpo.verl_trainer``, ``bnpo.verl_legacy``) publishes both here for the duration of one advantage call,
and the estimators (``bnpo.verl_estimators``) read them back. Pure Python; never imports verl.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class BatchContext:
    """fields: per-sample values by key ((bs,) arrays: the reward function's extra info).
    final_row: (bs,) row of each sample's session's final output, or None when every session has one output.
    """

    fields: Mapping[str, Any]
    final_row: Optional[np.ndarray] = None


_CONTEXT: ContextVar[Optional[BatchContext]] = ContextVar("bnpo_batch_context", default=None)


@contextmanager
def providing(fields: Mapping[str, Any], final_row: Optional[np.ndarray] = None) -> Iterator[None]:
    """Make ``fields`` and ``final_row`` visible to the estimators inside the block."""
    token = _CONTEXT.set(BatchContext(fields, final_row))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_batch() -> Optional[BatchContext]:
    """The context published by the innermost ``providing`` block, or None outside any."""
    return _CONTEXT.get()
