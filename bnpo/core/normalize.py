"""One reward's BNPO normalisation over a batch's questions (pure torch).

For question q with samples o and rewards mapped to s in [0, 1]:

    p_hat(q) = mean_o s(q, o),   A(q, o) = (s(q, o) - p_hat(q)) / f_N(p_hat(q); alpha, beta)

(the paper's group-mean baseline; ``baseline`` picks another, ``bnpo.core.baselines``) with (alpha, beta) =
(1 + a/3, 1 + b/3) (clamped at 1) from a method-of-moments Beta(a, b) fit over the batch's p_hat, or fixed.
"""

from __future__ import annotations

from typing import Optional

import torch

from .baselines import baseline_of
from .beta import beta_log_density, fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig
from .groups import group_stats
from .stats import BNPOStats


def normalized_outcome(
    s: torch.Tensor, inverse: torch.Tensor, num_groups: int, cfg: BNPOConfig, keep: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, BNPOStats]:
    """Scalar BNPO advantage (bs,) float64 of mapped rewards ``s`` (bs,) in [0, 1].

    ``inverse`` (bs,): each sample's question id in 0..num_groups-1; ``keep`` (bs,) bool, optional: the samples in
    the statistics (the others get 0).

    Degenerate cases: a singleton question is kept out of the fit; with the group-mean baseline it gets advantage 0
    (eb_loo gives it the batch mean). With the group mean, a question whose rewards are all equal has advantage exactly
    0. A fit over fewer than two questions or with zero variance gives (alpha, beta) = (1, 1) (REINFORCE with
    baseline).
    """
    groups = group_stats(s, inverse, num_groups, keep)
    fit = fit_beta_moments(groups.p_hat[groups.count >= 2])
    if cfg.adaptive:
        alpha, beta = optimal_alpha_beta(fit.a, fit.b)
    else:
        alpha, beta = s.new_tensor(cfg.fixed_alpha), s.new_tensor(cfg.fixed_beta)
    base = baseline_of(cfg.baseline, s, inverse, groups, keep)
    # the weight at p_hat; where f_N is 0 there (an all-failed question with alpha > 1, an all-solved one with beta >
    # 1, a binary singleton) eb_loo's advantage is not 0, and the clamp would put max_weight (1e6) on it: eb_loo
    # evaluates the weight at the question's credibility estimate instead
    at = groups.p_hat
    if base.fallback_at is not None:
        at = torch.where(torch.isneginf(beta_log_density(at, alpha, beta)), base.fallback_at, at)
    weight, clamped = inverse_density_weight(at, alpha, beta, cfg.max_weight)
    silent = base.silent.index_select(0, inverse)  # index_select: several times faster than [inverse] on CPU
    if keep is not None:
        silent |= ~keep
    advantage = torch.where(silent, 0.0, weight.index_select(0, inverse) * (s - base.per_sample))

    informative = ~base.silent
    any_informative = bool(informative.any())
    samples = groups.count[informative].sum()
    stats = BNPOStats(
        mu=float(fit.mu), var=float(fit.var), a=float(fit.a), b=float(fit.b), alpha=float(alpha), beta=float(beta),
        num_questions=int((groups.count > 0).sum()), num_fit=fit.num_questions,
        num_singleton=int((groups.count == 1).sum()), num_degenerate=int((groups.constant & (groups.count >= 2)).sum()),
        weight_max=float(weight[informative].max()) if any_informative else 0.0,
        clamped_frac=float((groups.count * clamped)[informative].sum() / samples) if any_informative else 0.0,
        fallback=fit.fallback if cfg.adaptive else None,
        eb_lambda=base.mean_lambda, eb_tau2=base.tau2,
    )
    return advantage, stats
