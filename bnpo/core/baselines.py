"""The baselines of ``algorithm.bnpo.baseline``: what each sample's reward is centred on (pure torch).

    group_mean      b_o = p_hat_q (the paper)
    posterior_mean  b_o = the posterior mean of p_q under a Beta prior with the batch's deconvolved moments
    eb_loo          b_o = the credibility estimate of p_q from the question's other samples

Each also says where the weight 1 / f_N is evaluated and which questions carry no signal. p_hat_q is the mean of
m_q samples, so its spread over the questions is the spread tau^2 of the true rates p_q plus the binomial noise of
the mean, E[p_q (1 - p_q) / m_q]; the method of moments separates them (docs/baselines.md):

    S^2     unbiased variance of p_hat_q over the questions Q (0 when |Q| < 2)
    v_q     within-question variance sum_o (s_o - p_hat_q)^2 / (m_q - 1) of a question with m_q >= 2
    sigma2  mean of v_q over Q2 = {q : m_q >= 2}          (estimates E[p (1 - p)])
    E       mean of v_q / m_q over Q2                     (estimates the noise part of S^2)
    tau2    max(0, S^2 - E)                               (estimates Var p)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .beta import BetaFit
from .groups import GroupStats


def batch_spread(
    s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, keep: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, sigma2, E, tau2), 0-dim float64, of scores ``s`` (bs,) by question ``inverse`` (bs,); ``keep`` (bs,)
    bool: the samples in them. mu (the mean of p_hat) and S^2 span every question present, singletons included;
    empty sets give 0 (no host syncs)."""
    count, p_hat = groups.count, groups.p_hat
    present, multi = count > 0, count >= 2
    n, n2 = present.sum(), multi.sum().clamp(min=1)
    mu = torch.where(present, p_hat, 0.0).sum() / n.clamp(min=1)
    s2 = torch.where(present, (p_hat - mu).pow(2), 0.0).sum() / (n - 1).clamp(min=1)
    squared = (s - p_hat.index_select(0, inverse)).pow(2)
    if keep is not None:  # where, not a product: a left-out sample's score may be anything
        squared = torch.where(keep, squared, 0.0)
    v = torch.zeros_like(count).index_add_(0, inverse, squared) / (count - 1).clamp(min=1)  # v_q where m_q >= 2
    noise = torch.where(multi, v / count.clamp(min=1), 0.0).sum() / n2
    return mu, torch.where(multi, v, 0.0).sum() / n2, noise, (s2 - noise).clamp(min=0.0)


@dataclass(frozen=True)
class Baseline:
    """per_sample: (bs,) b_o. weight_at: (G,) where 1 / f_N is evaluated; fallback_at: (G,) or None, where instead
    when f_N(weight_at) = 0. silent: (G,) bool, questions whose advantage is 0. mean_lambda: the mean weight of the
    batch / prior mean over the questions with >= 2 samples (None for group_mean; 1.0 when there are none). tau2: the
    deconvolved variance of p (None for group_mean)."""

    per_sample: torch.Tensor
    weight_at: torch.Tensor
    fallback_at: Optional[torch.Tensor]
    silent: torch.Tensor
    mean_lambda: Optional[float] = None
    tau2: Optional[float] = None


def baseline_of(
    name: str, s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, fit: BetaFit,
    keep: Optional[torch.Tensor] = None,
) -> Baseline:
    """The baseline ``name`` of scores ``s`` (bs,) grouped by ``inverse`` (bs,); ``fit``: the batch's (or pooled)
    Beta fit of p_hat over the questions with >= 2 samples; ``keep`` (bs,) bool: the samples in the statistics.

    eb_loo: lambda_q = 1 when m_q = 1 or tau2 = 0 (or no samples), else sigma2 / (sigma2 + (m_q - 1) tau2); b_o = mu
    for m_q = 1, else lambda_q mu + (1 - lambda_q) (m_q p_hat_q - s_o) / (m_q - 1): the sample's own reward never
    enters its baseline (up to its 1/|Q| share of the batch moments).
    posterior_mean: the prior is Beta(mu n0, (1 - mu) n0) with mu and var from ``fit`` (pooled with fit_halflife),
    E from this batch: n0 = mu (1 - mu) / (var - E) - 1, and b_o the posterior mean lambda_q mu + (1 - lambda_q) p_hat
    with lambda_q = n0 / (n0 + m_q). No spread left (var <= E) is n0 = inf: lambda 1, every question at the prior
    mean; n0 <= 0 (a spread beyond a Beta's) or no fit is no prior: lambda 0, the group mean.
    """
    count, p_hat = groups.count, groups.p_hat
    multi = count >= 2
    if name == "group_mean":
        return Baseline(p_hat.index_select(0, inverse), p_hat, None, ~multi | groups.constant)
    mu, sigma2, noise, tau2 = batch_spread(s, inverse, groups, keep)
    if name == "eb_loo":
        shrink = multi & (tau2 > 0)
        lam = torch.where(shrink, sigma2 / torch.where(shrink, sigma2 + (count - 1) * tau2, 1.0), 1.0)
        m, lam_o = count.index_select(0, inverse), lam.index_select(0, inverse)
        leave_one_out = (m * p_hat.index_select(0, inverse) - s) / (m - 1).clamp(min=1)
        per_sample = torch.where(multi.index_select(0, inverse), lam_o * mu + (1 - lam_o) * leave_one_out, mu)
        # a constant question's advantage is lambda_q (p_hat - mu) times its weight: silent only where that is 0
        silent = (count < 1) | (groups.constant & (lam * (p_hat - mu) == 0))
        credibility = lam * mu + (1 - lam) * p_hat
        return Baseline(per_sample, p_hat, credibility, silent, _mean_over(lam, multi), float(tau2))
    prior_tau2 = fit.var - noise
    if fit.fallback is not None:  # no fit, no prior
        lam, prior_tau2 = torch.zeros_like(count), prior_tau2.new_zeros(())
    elif not bool(prior_tau2 > 0):
        lam = torch.ones_like(count)
    else:
        n0 = (fit.mu * (1 - fit.mu) / prior_tau2 - 1).clamp(min=0.0)
        lam = n0 / (n0 + count).clamp(min=torch.finfo(torch.float64).tiny)
    centre = lam * fit.mu + (1 - lam) * p_hat
    # silent: singletons only (all-solved and all-failed questions carry a signal too)
    return Baseline(centre.index_select(0, inverse), centre, None, ~multi, _mean_over(lam, multi),
                    float(prior_tau2.clamp(min=0.0)))


def _mean_over(lam: torch.Tensor, multi: torch.Tensor) -> float:
    return float(lam[multi].mean()) if bool(multi.any()) else 1.0
