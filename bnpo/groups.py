"""Per-question (uid) group statistics without Python loops over samples or groups."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Optional

import numpy as np
import torch


@cache
def _pandas_factorize() -> Optional[Callable]:
    """pandas.factorize when pandas is importable (verl depends on it; bnpo does not), else None."""
    try:
        from pandas import factorize
    except ImportError:
        return None
    return factorize


def _factorize_sorted(labels: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """np.unique(labels, return_inverse=True)'s inverse and group count, by hashing instead of sorting.

    Sorting (bs,) object uids (verl's uuid4 strings) compares Python objects; hashing them is several
    times faster, and only the G distinct labels are then sorted, so the ids are exactly np.unique's.
    Returns None when pandas is absent or its rules differ from numpy's (None / NaN labels).
    """
    factorize = _pandas_factorize()
    if factorize is None:
        return None
    try:
        codes, uniques = factorize(labels)
    except TypeError:  # unhashable labels: np.unique's rules (and errors) apply
        return None
    if (codes < 0).any():  # pandas drops None / NaN labels; leave them to np.unique's behaviour
        return None
    try:
        order = np.argsort(uniques)
    except TypeError:  # incomparable label types: np.unique raises the error the caller reports
        return None
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], len(order)


def group_inverse(index: Any, num_samples: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary question labels (bs,) to contiguous group ids 0..G-1.

    ``index`` may be a numpy array / list of uids (strings, ints, ...) or a torch tensor.
    Returns the (bs,) long tensor of group ids on ``device`` and G.
    """
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.numel() != num_samples:
            raise ValueError(f"index (the uid of each sample) has shape {tuple(index.shape)}; expected ({num_samples},).")
        uniques, inverse = torch.unique(index, return_inverse=True)
        return inverse.to(device=device, dtype=torch.long), int(uniques.numel())
    labels = np.asarray(index)
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"index (the uid of each sample) has shape {labels.shape}; expected ({num_samples},).")
    if labels.dtype == object:
        fast = _factorize_sorted(labels)
        if fast is not None:
            return torch.from_numpy(fast[0]).to(device), fast[1]
    try:
        uniques, inverse = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"index (the uid of each sample) mixes label types that cannot be compared ({err}); "
            "use one type for all uids, e.g. str."
        ) from None
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device), int(len(uniques))


@dataclass(frozen=True)
class GroupStats:
    """Statistics of the per-sample scores s (bs,) grouped by question; all tensors are (G,)."""

    count: torch.Tensor  # samples per question (float64)
    p_hat: torch.Tensor  # mean score per question
    constant: torch.Tensor  # bool: all scores of the question are equal (no learning signal)


def group_stats(scores: torch.Tensor, inverse: torch.Tensor, num_groups: int) -> GroupStats:
    """Means and constancy of ``scores`` (bs,) per group id ``inverse`` (bs,)."""
    count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, inverse, torch.ones_like(scores)
    )
    total = torch.zeros_like(count).index_add_(0, inverse, scores)
    low = torch.full_like(count, float("inf")).scatter_reduce_(0, inverse, scores, reduce="amin")
    high = torch.full_like(count, float("-inf")).scatter_reduce_(0, inverse, scores, reduce="amax")
    return GroupStats(count=count, p_hat=total / count, constant=high == low)
