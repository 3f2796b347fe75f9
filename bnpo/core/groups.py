"""Per-question (uid) group statistics without Python loops over samples or groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch


class BNPOInputError(ValueError, TypeError):
    """A batch input of the wrong type or with missing values (a ValueError and a TypeError)."""


def _missing_uid_error(rows: np.ndarray, num_samples: int) -> BNPOInputError:
    return BNPOInputError(
        f"index (the uid of each sample) is missing (None or NaN) for {rows.size} of {num_samples} samples (first: "
        f"row {int(rows[0])}); every sample needs the uid of its question (verl's 'uid' field), e.g. a str."
    )


def _factorize_sorted(labels: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """np.unique(labels, return_inverse=True)'s inverse and group count, by hashing instead of sorting.

    Sorting (bs,) object uids (verl's uuid4 strings) compares Python objects; one dict of the distinct labels
    hashes each (str caches its hash), and only the G distinct labels are then sorted, so the ids are exactly
    np.unique's. Labels are equal as Python's == says, as for np.unique. Returns None when the labels cannot
    be hashed or ordered (np.unique's rules and errors then apply).
    """
    values = labels.tolist()
    try:
        distinct = dict.fromkeys(values)
    except TypeError:  # unhashable labels
        return None
    if _missing(np.fromiter(distinct, dtype=object, count=len(distinct))).any():  # None / NaN among the G labels
        _check_no_missing(labels)  # names the rows
    try:
        ordered = sorted(distinct)
    except TypeError:  # incomparable label types: np.unique raises the error the caller reports
        return None
    rank = dict(zip(ordered, range(len(ordered))))
    return np.fromiter(map(rank.__getitem__, values), dtype=np.int64, count=len(values)), len(ordered)


def _missing(labels: np.ndarray) -> np.ndarray:
    """(n,) bool: the None and NaN labels of an object or float array (all False for other dtypes)."""
    if labels.dtype == object:
        return np.asarray((labels == None) | (labels != labels), dtype=bool)  # noqa: E711 (elementwise)
    if labels.dtype.kind in "fc":
        return np.isnan(labels)
    return np.zeros(labels.shape, dtype=bool)


def _check_no_missing(labels: np.ndarray) -> None:
    """None and NaN uids (object or float arrays) are refused: they would group by accident."""
    missing = _missing(labels)
    if missing.any():
        raise _missing_uid_error(np.flatnonzero(missing), len(labels))


def group_inverse(index: Any, num_samples: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary question labels (bs,) to contiguous group ids 0..G-1.

    ``index`` may be a numpy array / list of uids (strings, ints, ...) or a torch tensor.
    Returns the (bs,) long tensor of group ids on ``device`` and G.
    """
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.numel() != num_samples:
            raise ValueError(f"index (the uid of each sample) has shape {tuple(index.shape)}; expected ({num_samples},).")
        if index.is_floating_point() and bool(torch.isnan(index).any()):
            raise _missing_uid_error(torch.isnan(index).nonzero().flatten().cpu().numpy(), num_samples)
        uniques, inverse = torch.unique(index, return_inverse=True)
        return inverse.to(device=device, dtype=torch.long), int(uniques.numel())
    labels = np.asarray(index)
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"index (the uid of each sample) has shape {labels.shape}; expected ({num_samples},).")
    if labels.dtype == object:
        fast = _factorize_sorted(labels)
        if fast is not None:
            return torch.from_numpy(fast[0]).to(device), fast[1]
    _check_no_missing(labels)
    try:
        uniques, inverse = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise BNPOInputError(
            f"index (the uid of each sample) mixes label types that cannot be compared ({err}); "
            "use one type for all uids, e.g. str."
        ) from None
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device), int(len(uniques))


@dataclass(frozen=True)
class GroupStats:
    """Statistics of the per-sample scores s (bs,) grouped by question; all tensors are (G,)."""

    count: torch.Tensor  # samples per question that entered the statistics (0: question absent)
    p_hat: torch.Tensor  # mean score per question (0 where absent)
    constant: torch.Tensor  # bool: all scores of the question are equal (no learning signal)


def group_stats(
    scores: torch.Tensor, inverse: torch.Tensor, num_groups: int, keep: Optional[torch.Tensor] = None
) -> GroupStats:
    """Means and constancy of ``scores`` (bs,) per group id ``inverse`` (bs,).

    ``keep`` (bs,) bool, optional: only these samples enter the statistics; a question none of whose
    samples is kept has count 0.
    """
    if keep is None:
        weights, summed, low_in, high_in = torch.ones_like(scores), scores, scores, scores
    else:  # where, not a product: a left-out sample's score may be anything, NaN included
        weights = keep.to(scores.dtype)
        summed = torch.where(keep, scores, 0.0)
        low_in = torch.where(keep, scores, float("inf"))
        high_in = torch.where(keep, scores, float("-inf"))
    count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(0, inverse, weights)
    total = torch.zeros_like(count).index_add_(0, inverse, summed)
    low = torch.full_like(count, float("inf")).scatter_reduce_(0, inverse, low_in, reduce="amin")
    high = torch.full_like(count, float("-inf")).scatter_reduce_(0, inverse, high_in, reduce="amax")
    return GroupStats(count=count, p_hat=total / count.clamp(min=1), constant=high == low)
