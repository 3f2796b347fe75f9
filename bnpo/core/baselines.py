"""The baselines of ``algorithm.bnpo.baseline``: what each sample's reward is centred on (pure torch).

    group_mean      b_o = p_hat_q (the paper)
    posterior_mean  b_o = the posterior mean of p_q under a Beta prior with the batch's deconvolved moments
    eb_loo          b_o = the credibility estimate of p_q from the question's other samples

Each also says at which point the weight 1 / f_N is evaluated and which questions carry no signal.

The per-question success rate p_hat_q is the mean of m_q samples, so its spread over the batch's questions has
two parts: the spread tau^2 of the true rates p_q, and the binomial noise of the mean, E[p_q (1 - p_q) / m_q].
The method-of-moments estimates below separate them ("deconvolve"):

    S^2     unbiased variance of p_hat_q over the questions Q (0 when |Q| < 2)
    v_q     within-question variance sum_o (s_o - p_hat_q)^2 / (m_q - 1) of a question with m_q >= 2
    sigma2  mean of v_q over Q2 = {q : m_q >= 2}          (estimates E[p (1 - p)])
    E       mean of v_q / m_q over Q2                     (estimates the noise part of S^2)
    tau2    max(0, S^2 - E)                               (estimates Var p)

``baseline: eb_loo`` (``eb_loo_baseline``) is the credibility (linear empirical-Bayes) estimate of p_q from the
question's other samples: b_o = lambda_q mu + (1 - lambda_q) (m_q p_hat_q - s_o) / (m_q - 1) with
lambda_q = sigma2 / (sigma2 + (m_q - 1) tau2), so the sample's own reward never enters its baseline (up to its
1/|Q| share of the batch moments). ``baseline: posterior_mean`` uses the Beta prior with the same deconvolved
variance (``deconvolved_shrinkage``). No Python loop over samples or questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .beta import BetaFit
from .groups import GroupStats


@dataclass(frozen=True)
class BatchSpread:
    """The moments above for one batch (0-dim float64 tensors)."""

    mu: torch.Tensor  # mean of p_hat over the questions present
    s2: torch.Tensor
    sigma2: torch.Tensor
    noise: torch.Tensor  # E
    tau2: torch.Tensor


def within_variance(
    s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """v_q = sum_o (s_o - p_hat_q)^2 / (m_q - 1), (G,) float64; 0 for questions with fewer than 2 samples.

    ``s`` (bs,) scores, ``inverse`` (bs,) question ids, ``keep`` (bs,) bool: the samples in the statistics.
    """
    squared = (s - groups.p_hat.index_select(0, inverse)).pow(2)
    if keep is not None:  # where, not a product: a left-out sample's score may be anything
        squared = torch.where(keep, squared, 0.0)
    total = torch.zeros_like(groups.count).index_add_(0, inverse, squared)
    return torch.where(groups.count >= 2, total / (groups.count - 1).clamp(min=1), 0.0)


def noise_of_means(v: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma2, E): the means of v_q and of v_q / m_q over the questions with m_q >= 2; (0, 0) if there are none.

    ``v``, ``count``: (G,).
    """
    multi = count >= 2
    n = multi.sum()
    if not bool(n > 0):
        zero = v.new_zeros(())
        return zero, zero
    sigma2 = torch.where(multi, v, 0.0).sum() / n
    noise = torch.where(multi, v / count.clamp(min=1), 0.0).sum() / n
    return sigma2, noise


def batch_spread(
    s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, keep: Optional[torch.Tensor] = None
) -> tuple[BatchSpread, torch.Tensor]:
    """The batch's moments (mu and S^2 over every question present, singletons included) and v_q (G,)."""
    present = groups.count > 0
    n = present.sum()
    if bool(n > 0):
        mu = torch.where(present, groups.p_hat, 0.0).sum() / n
    else:
        mu = s.new_zeros((), dtype=torch.float64)
    if bool(n > 1):
        s2 = torch.where(present, (groups.p_hat - mu).pow(2), 0.0).sum() / (n - 1)
    else:
        s2 = mu.new_zeros(())
    v = within_variance(s, inverse, groups, keep)
    sigma2, noise = noise_of_means(v, groups.count)
    return BatchSpread(mu, s2, sigma2, noise, (s2 - noise).clamp(min=0.0)), v


def eb_loo_baseline(
    s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, spread: BatchSpread
) -> tuple[torch.Tensor, torch.Tensor]:
    """``baseline: eb_loo``: each sample's baseline b_o (bs,) and each question's lambda_q (G,).

    lambda_q = 1 when m_q = 1 or tau2 = 0, else sigma2 / (sigma2 + (m_q - 1) tau2); b_o = mu for m_q = 1, else
    lambda_q mu + (1 - lambda_q) (m_q p_hat_q - s_o) / (m_q - 1). Questions without samples get lambda_q = 1.
    """
    count = groups.count
    multi = count >= 2
    shrink = multi & (spread.tau2 > 0)
    denominator = spread.sigma2 + (count - 1) * spread.tau2
    lam = torch.where(shrink, spread.sigma2 / torch.where(shrink, denominator, 1.0), 1.0)
    m = count.index_select(0, inverse)
    leave_one_out = (m * groups.p_hat.index_select(0, inverse) - s) / (m - 1).clamp(min=1)
    lam_o = lam.index_select(0, inverse)
    baseline = torch.where(multi.index_select(0, inverse), lam_o * spread.mu + (1 - lam_o) * leave_one_out, spread.mu)
    return baseline, lam


def deconvolved_shrinkage(count: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``baseline: posterior_mean``: the weight n0 / (n0 + m_q) of the prior mean in the posterior mean, (G,).

    The prior is Beta(mu n0, (1 - mu) n0) with Var p = var - noise (the deconvolved variance):
    n0 = mu (1 - mu) / (var - noise) - 1. No spread left (var <= noise) is n0 = inf: weight 1, every question
    at the prior mean; n0 <= 0 (a spread beyond a Beta's) is no prior: weight 0, the question's own p_hat.
    """
    tau2 = var - noise
    if not bool(tau2 > 0):
        return torch.ones_like(count)
    n0 = (mu * (1 - mu) / tau2 - 1).clamp(min=0.0)
    return n0 / (n0 + count).clamp(min=torch.finfo(torch.float64).tiny)


@dataclass(frozen=True)
class Baseline:
    """per_sample: (bs,) b_o. weight_at: (G,) where the weight 1 / f_N is evaluated. fallback_at: (G,) or None,
    where it is evaluated instead when f_N(weight_at) = 0. silent: (G,) bool, questions whose advantage is 0.
    mean_lambda: the mean weight of the batch / prior mean over the questions with >= 2 samples (None for
    group_mean; 1.0 when there are none). tau2: the deconvolved variance of p (None for group_mean)."""

    per_sample: torch.Tensor
    weight_at: torch.Tensor
    fallback_at: Optional[torch.Tensor]
    silent: torch.Tensor
    mean_lambda: Optional[float] = None
    tau2: Optional[float] = None


def _mean_over_multi(lam: torch.Tensor, count: torch.Tensor) -> float:
    multi = count >= 2
    return float(lam[multi].mean()) if bool(multi.any()) else 1.0


def baseline_of(
    name: str, s: torch.Tensor, inverse: torch.Tensor, groups: GroupStats, fit: BetaFit,
    keep: Optional[torch.Tensor] = None,
) -> Baseline:
    """The baseline ``name`` of scores ``s`` (bs,) grouped by ``inverse`` (bs,); ``fit``: the batch's (or pooled)
    Beta fit of p_hat over the questions with >= 2 samples; ``keep`` (bs,) bool: the samples in the statistics."""
    if name == "eb_loo":
        spread, _ = batch_spread(s, inverse, groups, keep)
        per_sample, lam = eb_loo_baseline(s, inverse, groups, spread)
        # a constant question's advantage is lambda_q (p_hat - mu) times its weight: silent only where that is 0
        silent = (groups.count < 1) | (groups.constant & (lam * (groups.p_hat - spread.mu) == 0))
        credibility = lam * spread.mu + (1 - lam) * groups.p_hat
        return Baseline(per_sample, groups.p_hat, credibility, silent, _mean_over_multi(lam, groups.count),
                        float(spread.tau2))
    if name == "posterior_mean":
        # the prior's mean and variance from the fit (pooled with fit_halflife); its noise part E from this batch
        _, noise = noise_of_means(within_variance(s, inverse, groups, keep), groups.count)
        if fit.fallback is None:
            lam = deconvolved_shrinkage(groups.count, fit.mu, fit.var, noise)
            tau2 = float((fit.var - noise).clamp(min=0.0))
        else:  # no fit, no prior: the group mean
            lam, tau2 = torch.zeros_like(groups.count), 0.0
        centre = lam * fit.mu + (1 - lam) * groups.p_hat
        silent = groups.count < 2  # all-solved and all-failed questions carry a signal too
        return Baseline(centre.index_select(0, inverse), centre, None, silent, _mean_over_multi(lam, groups.count), tau2)
    silent = (groups.count < 2) | groups.constant
    return Baseline(groups.p_hat.index_select(0, inverse), groups.p_hat, None, silent)
