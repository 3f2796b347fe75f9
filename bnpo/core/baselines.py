"""The baselines of ``algorithm.bnpo.baseline``: what each sample's reward is centred on (pure torch).

    group_mean  b_o = p_hat_q (the paper)
    eb_loo      b_o = the credibility estimate of p_q from the question's other samples

Each also says which questions carry no signal. p_hat_q is the mean of m_q samples, so its spread over the questions
is the spread tau^2 of the true rates p_q plus the binomial noise of the mean, E[p_q (1 - p_q) / m_q]; the method of
moments separates them (docs/baselines.md):

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

from .groups import GroupStats


def batch_spread(
    s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, keep: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, sigma2, tau2), 0-dim float64, of scores ``s`` (bs,) by question ``inverse`` (bs,); ``keep`` (bs,)
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
    return mu, torch.where(multi, v, 0.0).sum() / n2, (s2 - noise).clamp(min=0.0)


@dataclass(frozen=True)
class Baseline:
    """per_sample: (bs,) b_o. fallback_at: (G,) or None, where 1 / f_N is evaluated instead of p_hat when f_N(p_hat)
    = 0. silent: (G,) bool, questions whose advantage is 0. mean_lambda: the mean shrinkage over the questions with
    >= 2 samples (1.0 when there are none; None for group_mean). tau2: the deconvolved variance of p (None for
    group_mean)."""

    per_sample: torch.Tensor
    fallback_at: Optional[torch.Tensor]
    silent: torch.Tensor
    mean_lambda: Optional[float] = None
    tau2: Optional[float] = None


def baseline_of(
    name: str, s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, keep: Optional[torch.Tensor] = None
) -> Baseline:
    """The baseline ``name`` of scores ``s`` (bs,) grouped by ``inverse`` (bs,); ``keep`` (bs,) bool: the samples in
    the statistics.

    eb_loo: lambda_q = 1 when m_q = 1 or tau2 = 0 (or no samples), else sigma2 / (sigma2 + (m_q - 1) tau2); b_o = mu
    for m_q = 1, else lambda_q mu + (1 - lambda_q) (m_q p_hat_q - s_o) / (m_q - 1): the sample's own reward never
    enters its baseline (up to its 1/|Q| share of the batch moments).
    """
    count, p_hat = groups.count, groups.p_hat
    multi = count >= 2
    if name == "group_mean":
        return Baseline(p_hat.index_select(0, inverse), None, ~multi | groups.constant)
    mu, sigma2, tau2 = batch_spread(s, inverse, groups, keep)
    shrink = multi & (tau2 > 0)
    lam = torch.where(shrink, sigma2 / torch.where(shrink, sigma2 + (count - 1) * tau2, 1.0), 1.0)
    m, lam_o = count.index_select(0, inverse), lam.index_select(0, inverse)
    leave_one_out = (m * p_hat.index_select(0, inverse) - s) / (m - 1).clamp(min=1)
    per_sample = torch.where(multi.index_select(0, inverse), lam_o * mu + (1 - lam_o) * leave_one_out, mu)
    # a constant question's advantage is lambda_q (p_hat - mu) times its weight: silent only where that is 0
    silent = (count < 1) | (groups.constant & (lam * (p_hat - mu) == 0))
    mean_lambda = float(lam[multi].mean()) if bool(multi.any()) else 1.0
    return Baseline(per_sample, lam * mu + (1 - lam) * p_hat, silent, mean_lambda, float(tau2))
