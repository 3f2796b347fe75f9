"""The probe's measures of K gradients g_k (K, P) (pure torch / numpy), kappa by level and spreads:

    tr Cov    = sum_k ||g_k - g_bar||^2 / (K - 1)                   unbiased
    ||E g||^2 = (||sum_k g_k||^2 - sum_k ||g_k||^2) / (K (K - 1))   unbiased (the cross terms only)
    per-batch noise = tr Cov / ||E g||^2      the noise of one batch's gradient, scale-free, without finite-K bias
    unbiased cosine = g_bar . r_bar / sqrt(||E g||^2 ||E r||^2)     of the estimator's mean and the reference's:
                      unlike single gradients' cosine it does not shrink with the noise, so it isolates the bias
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GradientSums:
    """What the unbiased measures need of many gradients, without keeping them: count, sum (P,), sum of ||g||^2."""

    count: int = 0
    total: torch.Tensor | None = None
    squared_norms: float = 0.0

    def add(self, grad: torch.Tensor) -> None:
        """Add one gradient (P,) (accumulated in float64)."""
        g = grad.to(torch.float64)
        self.total = g.clone() if self.total is None else self.total + g
        self.squared_norms += g.pow(2).sum().item()
        self.count += 1

    @classmethod
    def of(cls, grads: torch.Tensor) -> "GradientSums":
        """The sums of K gradients (K, P)."""
        g = grads.to(torch.float64)
        return cls(int(g.shape[0]), g.sum(dim=0), g.pow(2).sum().item())

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def signal(self) -> float:
        """Unbiased ||E g||^2; nan with fewer than 2 gradients. May be <= 0 when the mean is not resolved."""
        k = self.count
        return (self.total.pow(2).sum().item() - self.squared_norms) / (k * (k - 1)) if k >= 2 else math.nan


def trace_covariance(grads: torch.Tensor) -> float:
    """Unbiased tr Cov(g) of K gradients (K, P), from the deviations themselves (exactly 0 when they agree)."""
    g = grads.to(torch.float64)
    return (g - g.mean(dim=0)).pow(2).sum().item() / (g.shape[0] - 1)


def per_batch_noise(grads: torch.Tensor) -> float:
    """tr Cov(g) / ||E g||^2 of one batch's gradient from K gradients (K, P), both unbiased: 0 when they agree,
    inf when the mean is not resolved (the estimate of ||E g||^2 is not positive: K too small for this noise)."""
    trace = trace_covariance(grads)
    if trace == 0:
        return 0.0
    signal = GradientSums.of(grads).signal()
    return trace / signal if signal > 0 else math.inf


def unbiased_cosine(grads: GradientSums, reference: GradientSums) -> float:
    """cos(E g, E r) from two independent sets of gradients, with both squared norms debiased; nan when either mean
    is not resolved. Not bounded by 1: it is a ratio of estimates (the reference against itself scatters around 1)."""
    signal, reference_signal = grads.signal(), reference.signal()
    if not (signal > 0 and reference_signal > 0):
        return math.nan
    return (grads.mean @ reference.mean).item() / math.sqrt(signal * reference_signal)


def spread(values: list[float]) -> dict[str, float]:
    """Median, interquartile range and standard deviation of a list of numbers."""
    x = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def measure(grads: torch.Tensor, reference: GradientSums) -> dict[str, float]:
    """The probe's numbers for one estimator at one snapshot, from its K gradients (K, P) and the reference's sums."""
    sums = GradientSums.of(grads)
    return {
        "per_batch_noise": per_batch_noise(grads),
        "unbiased_cosine": unbiased_cosine(sums, reference),
        "grad_norm": grads.to(torch.float64).norm(dim=1).mean().item(),
        "variance": trace_covariance(grads),  # Theorem 1's quantity: tr Cov of one batch's gradient
        "signal": sums.signal(),  # unbiased ||E g||^2: per_batch_noise = variance / signal
    }


def kappa_by_level(p_hat: np.ndarray, kappa: np.ndarray, m: int, min_count: int) -> dict[str, list]:
    """Mean kappa of the mixed questions (``p_hat``, ``kappa``: (n,)) at each level p_hat = j/m, j = 1..m-1: (m-1,)
    lists. ``mean``: nan without questions; ``relative``: that mean over all questions' mean, shown only for levels
    with at least ``min_count`` questions (one question's kappa is no estimate of a level's)."""
    j = np.rint(np.asarray(p_hat, dtype=np.float64) * m).astype(np.int64)
    kappa = np.asarray(kappa, dtype=np.float64)
    at = j[None, :] == np.arange(1, m)[:, None]  # (m-1, n): which questions are at each level
    count = at.sum(axis=1)
    mean = np.array([kappa[row].mean() if c else math.nan for row, c in zip(at, count)])  # per level, not sample
    overall = kappa.mean() if kappa.size else math.nan
    relative = np.where(count >= min_count, mean / overall, math.nan)
    return {"m": m, "p_hat": (np.arange(1, m) / m).tolist(), "count": count.tolist(), "mean": mean.tolist(),
            "relative": relative.tolist(), "overall": float(overall), "min_count": min_count}
