"""Per-sample batch fields handed to ``ad_bnpo`` by the trainer integration.

verl's ``compute_advantage`` passes ``non_tensor_batch`` to no estimator but gdpo, so the bnpo
trainers (``bnpo.verl_trainer``, ``bnpo.verl_legacy``) publish the reward components here for the
duration of one advantage call, and ``ad_bnpo`` reads them back. Pure Python; never imports verl.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Optional

_FIELDS: ContextVar[Optional[Mapping[str, Any]]] = ContextVar("bnpo_batch_fields", default=None)


@contextmanager
def providing(fields: Mapping[str, Any]) -> Iterator[None]:
    """Make ``fields`` (key -> (bs,) per-sample values) visible to estimators inside the block."""
    token = _FIELDS.set(fields)
    try:
        yield
    finally:
        _FIELDS.reset(token)


def current_fields() -> Optional[Mapping[str, Any]]:
    """The fields published by the innermost ``providing`` block, or None outside any."""
    return _FIELDS.get()
