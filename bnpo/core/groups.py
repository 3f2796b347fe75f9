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


def _missing(labels: np.ndarray) -> np.ndarray:
    """(n,) bool: the None and NaN labels of an object or float array (all False for other dtypes)."""
    if labels.dtype == object:
        return np.asarray((labels == None) | (labels != labels), dtype=bool)  # noqa: E711 (elementwise)
    return np.isnan(labels) if labels.dtype.kind in "fc" else np.zeros(labels.shape, dtype=bool)


def _check_no_missing(missing: np.ndarray) -> None:
    """None and NaN uids, ``missing`` (bs,) bool, are refused: they would group by accident."""
    if missing.any():
        rows = np.flatnonzero(missing)
        raise BNPOInputError(f"index (the uid of each sample) is missing (None or NaN) for {rows.size} of "
                             f"{missing.size} samples (first: row {int(rows[0])}); every sample needs the uid of its "
                             "question (verl's 'uid' field), e.g. a str.")


def _factorize(labels: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """np.unique(labels, return_inverse=True)'s inverse and G, hashing (bs,) object uids (verl's uuid4 strings) once
    instead of sorting them as Python objects: only the G distinct labels are sorted. None when the labels cannot be
    hashed or ordered (np.unique's rules and errors then apply)."""
    values = labels.tolist()
    try:
        distinct = dict.fromkeys(values)
    except TypeError:  # unhashable labels
        return None
    if _missing(np.fromiter(distinct, dtype=object, count=len(distinct))).any():  # None / NaN among the G labels
        _check_no_missing(_missing(labels))  # names the rows
    try:
        rank = {label: i for i, label in enumerate(sorted(distinct))}
    except TypeError:  # incomparable label types: np.unique raises the error the caller reports
        return None
    return np.fromiter(map(rank.__getitem__, values), dtype=np.int64, count=len(values)), len(rank)


def group_inverse(index: Any, num_samples: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Question labels ``index`` (bs,) (numpy array / list of uids, or a tensor) -> (bs,) long ids 0..G-1 on
    ``device``, and G."""
    labels = index if isinstance(index, torch.Tensor) else np.asarray(index)
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"index (the uid of each sample) has shape {tuple(labels.shape)}; expected ({num_samples},).")
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point():
            _check_no_missing(torch.isnan(labels).cpu().numpy())
        uniques, inverse = torch.unique(labels, return_inverse=True)
        return inverse.to(device=device, dtype=torch.long), int(uniques.numel())
    fast = _factorize(labels) if labels.dtype == object else None
    if fast is not None:
        return torch.from_numpy(fast[0]).to(device), fast[1]
    _check_no_missing(_missing(labels))
    try:
        uniques, inverse = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise BNPOInputError(f"index (the uid of each sample) mixes label types that cannot be compared ({err}); "
                             "use one type for all uids, e.g. str.") from None
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
    """Means and constancy of ``scores`` (bs,) per group id ``inverse`` (bs,); only the samples in ``keep`` (bs,)
    bool, optional, enter (a question none of whose samples is kept has count 0)."""
    def kept(fill: float) -> torch.Tensor:  # where, not a product: a left-out score may be anything, NaN included
        return scores if keep is None else torch.where(keep, scores, fill)

    weights = torch.ones_like(scores) if keep is None else keep.to(scores.dtype)
    count = scores.new_zeros(num_groups).index_add_(0, inverse, weights)
    total = torch.zeros_like(count).index_add_(0, inverse, kept(0.0))
    low = torch.full_like(count, float("inf")).scatter_reduce_(0, inverse, kept(float("inf")), reduce="amin")
    high = torch.full_like(count, float("-inf")).scatter_reduce_(0, inverse, kept(float("-inf")), reduce="amax")
    return GroupStats(count=count, p_hat=total / count.clamp(min=1), constant=high == low)


@dataclass(frozen=True)
class SampleRows:
    """Which samples carry an outcome of their own. keep: (bs,) bool, those in the groups and the fit (None: all);
    source: (bs,) long, the sample whose advantage each takes (its session's final output; None: each its own)."""

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


def select_rows(
    response_mask: torch.Tensor, final_row: Any = None, inverse: Optional[torch.Tensor] = None
) -> SampleRows:
    """The samples that count, from the response mask (bs, L): one without response tokens (verl's padding rows) is
    left out, advantage 0. ``final_row`` (bs,): each sample's session's final output (multi-output agent loops); only
    final outputs enter the groups, the others take their final output's advantage, as verl does for grpo
    (``compute_advantage_for_multi_trajectories``). A final output names itself, and (with ``inverse`` (bs,)) a
    session's outputs share one question; anything else raises BNPOInputError."""
    bs = response_mask.shape[0]
    keep = response_rows(response_mask)
    num_excluded = bs - int(keep.sum())
    source, num_broadcast = None, 0
    if final_row is not None:
        rows = final_row if isinstance(final_row, torch.Tensor) else torch.from_numpy(np.asarray(final_row))
        source = rows.to(device=response_mask.device, dtype=torch.long)
        if source.shape != (bs,) or bool(((source < 0) | (source >= bs)).any()):
            raise BNPOInputError(f"final_row must be ({bs},) row indices into the batch; got "
                                 f"{tuple(source.shape)}.")
        wrong = source[source] != source
        if inverse is not None:
            wrong |= inverse[source] != inverse
        if bool(wrong.any()):
            row = int(wrong.nonzero()[0])
            raise BNPOInputError(f"final_row is not a session layout: row {row} names row {int(source[row])} as its "
                                 f"session's final output, which names row {int(source[source[row]])} (a final output "
                                 "names itself) or belongs to another question.")
        final = source == torch.arange(bs, device=source.device)
        num_broadcast = int((keep & ~final).sum())
        keep = keep & final
        source = source if num_broadcast else None
    return SampleRows(keep if num_excluded or num_broadcast else None, source, num_excluded, num_broadcast)


def response_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """(bs,) bool: the rows of the mask (bs, L) with a positive entry (a response token). verl's responses start at
    column 0: only integer or bool rows whose first entry is not positive are scanned, so the mask is not read end to
    end twice per call. Floating-point masks are scanned whole (``amax``; a NaN entry leaves its row out)."""
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
