"""Which samples of a batch enter BNPO's groups: verl's padding rows and multi-output sessions (pure torch)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from .groups import BNPOInputError
from .stats import BNPOStats


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
