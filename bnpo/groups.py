"""Per-question (uid) group statistics without Python loops over samples or groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def group_inverse(index: Any, num_samples: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary question labels (bs,) to contiguous group ids 0..G-1.

    ``index`` may be a numpy array / list of uids (strings, ints, ...) or a torch tensor.
    Returns the (bs,) long tensor of group ids on ``device`` and G.
    """
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.numel() != num_samples:
            raise ValueError(f"index (the uid of each sample) has shape {tuple(index.shape)}; expected ({num_samples},).")
        _, inverse = torch.unique(index, return_inverse=True)
        return inverse.to(device=device, dtype=torch.long), int(inverse.max().item()) + 1 if num_samples else 0
    labels = np.asarray(index)
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"index (the uid of each sample) has shape {labels.shape}; expected ({num_samples},).")
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
