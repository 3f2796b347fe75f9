"""The probe's measures (pure torch / numpy): gradient noise, cosines, spreads, and Theorem 1's variance."""

from __future__ import annotations

import math

import numpy as np
import torch


def relative_noise(grads: torch.Tensor) -> float:
    """mean_k ||g_k - g_bar||^2 / ||g_bar||^2 of K gradients (K, P); 0 if they agree, inf if g_bar = 0 and they don't.

    Unchanged when every g_k is multiplied by the same constant. With K finite it is biased low for very noisy
    estimators (it cannot exceed K - 1); ``per_batch_noise`` removes that bias.
    """
    g = grads.to(torch.float64)
    mean = g.mean(dim=0)
    scatter = (g - mean).pow(2).sum(dim=1).mean().item()
    signal = mean.pow(2).sum().item()
    if signal > 0:
        return scatter / signal
    return 0.0 if scatter == 0 else math.inf


def per_batch_noise(grads: torch.Tensor) -> float:
    """tr Cov(g) / ||E g||^2 of one batch's gradient, estimated without the finite-K bias of ``relative_noise``.

    tr Cov from the unbiased sample variance; ||E g||^2 = ||g_bar||^2 - tr Cov / K. inf when the mean is not
    resolved (the estimate of ||E g||^2 is not positive): K is too small for this estimator's noise.
    """
    g = grads.to(torch.float64)
    k = g.shape[0]
    mean = g.mean(dim=0)
    trace = (g - mean).pow(2).sum(dim=1).sum().item() / (k - 1)
    signal = mean.pow(2).sum().item() - trace / k
    if trace == 0:
        return 0.0
    return trace / signal if signal > 0 else math.inf


def cosines(grads: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """cos(g_k, reference) of K gradients (K, P), (K,) float64; 0 for a zero vector."""
    g, r = grads.to(torch.float64), reference.to(torch.float64)
    norms = g.norm(dim=1) * r.norm()
    return torch.where(norms > 0, (g @ r) / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def spread(values: list[float]) -> dict[str, float]:
    """Median, interquartile range and standard deviation of a list of numbers."""
    x = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def theorem_variance(alpha: float, beta: float, a: float, b: float) -> float:
    """Theorem 1's gradient variance at normaliser Beta(alpha, beta) when p ~ Beta(a, b), up to a constant.

    E_p[p (1 - p) / f_N(p)^2] = B(alpha, beta)^2 B(a + 3 - 2 alpha, b + 3 - 2 beta) / B(a, b); inf where the
    integral diverges (alpha >= (a + 3) / 2 or beta >= (b + 3) / 2); nan when Beta(a, b) is no distribution
    (a fit that fell back to (0, 0), or a negative nu).
    """
    if not (a > 0 and b > 0):
        return math.nan
    x, y = a + 3 - 2 * alpha, b + 3 - 2 * beta
    if x <= 0 or y <= 0:
        return math.inf
    return math.exp(2 * _log_beta(alpha, beta) + _log_beta(x, y) - _log_beta(a, b))


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def theorem_normaliser(t: float, a: float, b: float) -> tuple[float, float]:
    """(1 + t a/3, 1 + t b/3), at least 1 as BNPO's own choice (t = 1)."""
    return max(1.0, 1 + t * a / 3), max(1.0, 1 + t * b / 3)


def measure(grads: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The probe's numbers for one estimator at one snapshot, from its K gradients (K, P)."""
    cos = cosines(grads, reference)
    mean = grads.to(torch.float64).mean(dim=0)
    return {
        "noise": relative_noise(grads),
        "per_batch_noise": per_batch_noise(grads),
        "cosine": cos.mean().item(),
        "cosine_sd": cos.std().item(),
        "mean_cosine": cosines(mean.unsqueeze(0), reference).item(),  # the mean's direction against grad J
        "grad_norm": grads.to(torch.float64).norm(dim=1).mean().item(),
        "variance": grads.to(torch.float64).sub(mean).pow(2).sum(dim=1).mean().item(),  # Theorem 1's quantity
        "signal": mean.pow(2).sum().item(),  # ||g_bar||^2: noise = variance / signal
    }


def kappa_by_level(pairs: list[tuple[float, float]], m: int) -> dict[str, list[float]]:
    """kappa of the mixed questions grouped by p_hat = j/m: count, median and median / the median of all."""
    levels = [j / m for j in range(1, m)]
    overall = float(np.median([k for _, k in pairs])) if pairs else math.nan
    count, median = [], []
    for level in levels:
        values = [k for p_hat, k in pairs if abs(p_hat - level) < 0.5 / m]
        count.append(len(values))
        median.append(float(np.median(values)) if values else math.nan)
    return {"m": m, "p_hat": levels, "count": count, "median": median, "relative": [v / overall for v in median]}
