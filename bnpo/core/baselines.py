"""The baselines of ``algorithm.bnpo.baseline``: what each sample's reward is centred on (pure torch).

    group_mean      b_o = p_hat_q (the paper)
    posterior_mean  b_o = the posterior mean of p_q under a Beta prior with the batch's deconvolved moments
    eb_loo          b_o = the credibility estimate of p_q from the question's other samples

(the moments: ``bnpo.core.credibility``). Each also says at which point the weight 1 / f_N is evaluated and which
questions carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .beta import BetaFit
from .credibility import batch_spread, deconvolved_shrinkage, eb_loo_baseline, noise_of_means, within_variance
from .groups import GroupStats


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
