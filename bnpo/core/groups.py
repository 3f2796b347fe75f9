"""Which samples of a batch count and how they group, without Python loops over samples or groups (pure torch).

``group_inverse``: question uids -> contiguous ids. ``select_rows``: which samples enter the groups (verl's padding
rows out, one output per agent-loop session). ``group_stats``: per-question counts, means and constancy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from .stats import BNPOStats


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


@dataclass(frozen=True)
class SampleRows:
    """Which samples of a batch carry an outcome of their own.

    keep: (bs,) bool, the samples that enter the groups and the Beta fit; None when all do.
    source: (bs,) long, the sample whose advantage each sample takes (its session's final output);
        None when every sample takes its own.
    """

    keep: Optional[torch.Tensor]
    source: Optional[torch.Tensor]
    num_excluded: int
    num_broadcast: int

    def spread(self, scalar: torch.Tensor) -> torch.Tensor:
        """Per-sample advantages (bs,) with each session's final advantage copied to its other outputs."""
        return scalar if self.source is None else scalar.index_select(0, self.source)

    def annotate(self, stats: BNPOStats) -> BNPOStats:
        """``stats`` (and its components') with this batch's row counts."""
        components = {key: self.annotate(sub) for key, sub in stats.components.items()}
        return replace(stats, num_excluded=self.num_excluded, num_broadcast=self.num_broadcast, components=components)


def select_rows(response_mask: torch.Tensor, final_row: Any = None, inverse: Optional[torch.Tensor] = None) -> SampleRows:
    """The samples that count, from the response mask (bs, L) and, optionally, agent-loop sessions.

    A sample without response tokens (all-zero mask, as verl's padding rows) is left out: advantage 0.
    ``final_row`` (bs,): for each sample, the row of its session's final output (verl's multi-output agent
    loops). Only final outputs enter the groups, once per session; the session's other outputs take the
    final output's advantage, as verl does for grpo (``compute_advantage_for_multi_trajectories``).
    A final output is its own final row, and with ``inverse`` (bs,) group ids given, a session's outputs
    belong to one question: anything else is not a session layout, and raises BNPOInputError.
    """
    bs = response_mask.shape[0]
    keep = response_rows(response_mask)
    num_excluded = bs - int(keep.sum())
    source, num_broadcast = None, 0
    if final_row is not None:
        rows = final_row if isinstance(final_row, torch.Tensor) else torch.from_numpy(np.asarray(final_row))
        source = rows.to(device=response_mask.device, dtype=torch.long)
        if source.shape != (bs,) or bool(((source < 0) | (source >= bs)).any()):
            raise BNPOInputError(f"final_row must be ({bs},) row indices into the batch; got {tuple(source.shape)}.")
        _check_sessions(source, inverse)
        final = source == torch.arange(bs, device=source.device)
        num_broadcast = int((keep & ~final).sum())
        keep = keep & final
        if num_broadcast == 0:
            source = None
    if num_excluded == 0 and num_broadcast == 0:
        keep = None
    return SampleRows(keep, source, num_excluded, num_broadcast)


def response_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """(bs,) bool: the rows of the mask (bs, L) with a response token, i.e. a positive entry.

    An integer or bool row whose first entry is positive has one: verl's responses start at column 0, so only
    the other rows (padding rows, empty responses) are scanned, and the mask is not read end to end twice per
    call (the advantage's broadcast reads it once). Floating-point masks are scanned whole (``amax``: a NaN
    entry leaves its row out, as it always has).
    """
    bs, length = response_mask.shape
    if length == 0:
        return torch.zeros(bs, dtype=torch.bool, device=response_mask.device)
    if response_mask.is_floating_point():
        return response_mask.amax(dim=-1) > 0  # amax: vectorised on CPU, where any() is not
    keep = response_mask[:, 0] > 0
    if bool(keep.all()):
        return keep
    rest = (~keep).nonzero().flatten()
    if rest.numel() > bs // 8:  # masks that often start with 0 (left padding): one pass, no copy of the rows
        return response_mask.amax(dim=-1) > 0
    keep[rest] = response_mask.index_select(0, rest).amax(dim=-1) > 0
    return keep


def _check_sessions(source: torch.Tensor, inverse: Optional[torch.Tensor]) -> None:
    """Each row's final row is a final row (its own), of the same question."""
    wrong = source[source] != source
    if inverse is not None:
        wrong |= inverse[source] != inverse
    if bool(wrong.any()):
        row = int(wrong.nonzero()[0])
        raise BNPOInputError(
            f"final_row is not a session layout: row {row} names row {int(source[row])} as its session's final output, "
            f"which names row {int(source[source[row]])} (a final output names itself) or belongs to another question."
        )
