"""Beta density and its method-of-moments fit, in log space (pure torch).

f_N(p; alpha, beta) = p^(alpha-1) (1-p)^(beta-1) / B(alpha, beta). ``xlogy`` / ``xlog1py`` make the boundaries exact:
at p = 0, (alpha-1) log p is 0 for alpha = 1 (not 0 * -inf = NaN) and -inf for alpha > 1, i.e. f_N(0) = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def beta_log_density(p: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """log f_N(p; alpha, beta), p (any shape) in [0, 1], exact (possibly -inf / +inf) at 0 and 1; alpha, beta > 0
    broadcastable to ``p``. log B(alpha, beta) = lgamma(alpha) + lgamma(beta) - lgamma(alpha + beta)."""
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return torch.special.xlogy(alpha - 1, p) + torch.special.xlog1py(beta - 1, -p) - log_b


def inverse_density_weight(
    p: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, max_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, clamped), both shaped as ``p``: 1 / f_N(p) clamped to [0, max_weight] (f_N = 0 gives max_weight),
    and where the clamp was active."""
    unclamped = torch.exp(-beta_log_density(p, alpha, beta))
    return unclamped.clamp(max=max_weight), unclamped >= max_weight


@dataclass(frozen=True)
class BetaFit:
    """Method-of-moments fit of Beta(a, b) to per-question success rates (0-dim tensors). ``fallback``: None, or why
    (a, b) = (0, 0) was used instead, which makes the optimal normaliser (alpha, beta) = (1, 1): REINFORCE with the
    per-question baseline."""

    mu: torch.Tensor
    var: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    num_questions: int
    fallback: str | None


def fit_beta_moments(p_hat: torch.Tensor) -> BetaFit:
    """Fit Beta(a, b) by moments over ``p_hat`` (num_questions,) in [0, 1] (the paper's per-batch fit).

    mu = mean, var = unbiased variance, nu = mu (1 - mu) / var - 1, a = mu nu, b = (1 - mu) nu. Fewer than two
    questions or var = 0 have no finite fit (the reference divides by zero): (a, b) = (0, 0), ``fallback`` says why.
    """
    n = int(p_hat.numel())
    p_hat = p_hat.to(torch.float64)
    zero = p_hat.new_zeros(())
    if n < 2:
        return BetaFit(p_hat.mean() if n == 1 else zero, zero, zero, zero, n, "fewer_than_2_questions")
    mu, var = p_hat.mean(), p_hat.var(unbiased=True)
    if not bool(var > 0):
        return BetaFit(mu, var, zero, zero, n, "zero_variance")
    nu = mu * (1 - mu) / var - 1
    return BetaFit(mu, var, mu * nu, (1 - mu) * nu, n, None)


def optimal_alpha_beta(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Theorem 1's variance-optimal normaliser, clamped at 1 from below as in the reference."""
    return (1 + a / 3).clamp(min=1.0), (1 + b / 3).clamp(min=1.0)
