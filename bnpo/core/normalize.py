"""One reward's BNPO normalisation over a batch's questions (pure torch).

For question q with samples o and rewards mapped to s in [0, 1]:

    p_hat(q) = mean_o s(q, o),   A(q, o) = (s(q, o) - p_hat(q)) / f_N(p_hat(q); alpha, beta)

with (alpha, beta) = (1 + a/3, 1 + b/3) (clamped at 1) from a method-of-moments Beta(a, b) fit over
the batch's p_hat, or fixed by configuration. The degenerate cases are documented in
``normalized_outcome``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .beta import fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig
from .groups import group_stats
from .pooling import MomentPool
from .stats import BNPOStats


def normalized_outcome(
    s: torch.Tensor,
    inverse: torch.Tensor,
    num_groups: int,
    cfg: BNPOConfig,
    keep: Optional[torch.Tensor] = None,
    pool: Optional[MomentPool] = None,
) -> tuple[torch.Tensor, BNPOStats]:
    """Scalar BNPO advantage (bs,) of mapped rewards ``s`` (bs,) in [0, 1], float64.

    ``inverse`` (bs,) holds each sample's question id in 0..num_groups-1; ``keep`` (bs,) bool, optional,
    the samples that enter the statistics (the others get 0); ``pool``, optional, pools the fit's moments
    with earlier batches (``cfg.fit_halflife``).

    Degenerate cases: a singleton question (one sample) has no baseline: advantage 0, and it is
    kept out of the Beta fit. With the group-mean baseline a question whose rewards are all equal has
    advantage exactly 0. If the fit has fewer than two questions or zero variance, (alpha, beta) = (1, 1)
    (REINFORCE with baseline) and the prior of the posterior-mean baseline is (0, 0), i.e. the group mean.
    """
    groups = group_stats(s, inverse, num_groups, keep)
    present = groups.count > 0
    singleton = groups.count == 1
    in_fit = groups.p_hat[groups.count >= 2]
    fit = fit_beta_moments(in_fit) if pool is None else pool.add(in_fit)
    if cfg.adaptive:
        alpha, beta = optimal_alpha_beta(fit.a, fit.b)
    else:
        alpha = s.new_tensor(cfg.fixed_alpha)
        beta = s.new_tensor(cfg.fixed_beta)

    if cfg.baseline == "posterior_mean":
        centre = posterior_mean(groups.count, groups.p_hat, fit.a, fit.b)
        silent = groups.count < 2  # all-solved and all-failed questions now carry a signal
    else:
        centre = groups.p_hat
        silent = (groups.count < 2) | groups.constant  # (G,): questions that carry no learning signal
    weight, clamped = inverse_density_weight(centre, alpha, beta, cfg.max_weight)
    silent_sample = silent[inverse] if keep is None else silent[inverse] | ~keep
    advantage = torch.where(silent_sample, 0.0, weight[inverse] * (s - centre[inverse]))

    informative = ~silent
    samples = groups.count[informative].sum()
    any_informative = bool(informative.any())
    stats = BNPOStats(
        mu=float(fit.mu),
        var=float(fit.var),
        a=float(fit.a),
        b=float(fit.b),
        alpha=float(alpha),
        beta=float(beta),
        num_questions=int(present.sum()),
        num_fit=fit.num_questions,
        num_singleton=int(singleton.sum()),
        num_degenerate=int((groups.constant & (groups.count >= 2)).sum()),
        weight_max=float(weight[informative].max()) if any_informative else 0.0,
        clamped_frac=float((groups.count * clamped)[informative].sum() / samples) if any_informative else 0.0,
        fallback=fit.fallback if cfg.adaptive else None,
        fit_weight=pool.weight if pool is not None else float(fit.num_questions),
    )
    return advantage, stats


def posterior_mean(count: torch.Tensor, p_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[p(q) | the question's m scores] under a Beta(a, b) prior: (a + m p_hat) / (a + b + m), (G,).

    The prior is clamped at (0, 0) from below (nu < 0 gives a, b < 0, which are no prior); with a > 0 and
    b > 0 the mean lies strictly inside (0, 1), where f_N is positive and finite, so an all-failed or
    all-solved question gets a finite weight. With (0, 0) it is p_hat. Questions with no samples get p_hat.
    """
    a, b = a.clamp(min=0.0), b.clamp(min=0.0)
    shrunk = (a + count * p_hat) / (a + b + count).clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(count > 0, shrunk, p_hat)
