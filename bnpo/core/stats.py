"""Statistics of one estimator call, returned with the advantages for the trainer integration to log."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

# The fit's numbers: one Beta fit's. AD-BNPO's top level has one fit per component, so it reports none of these
# (each component's are under bnpo/<component>/).
FIT_NAMES = ("mu", "var", "a", "b", "alpha", "beta", "fit_weight", "eb_lambda", "eb_tau2")
METRIC_NAMES = (
    "mu", "var", "a", "b", "alpha", "beta", "num_questions", "num_singleton", "num_degenerate", "num_excluded",
    "num_broadcast", "fit_weight", "weight_max", "clamped_frac", "eb_lambda", "eb_tau2",
)


@dataclass(frozen=True)
class BNPOStats:
    """What one BNPO normalisation saw and did (plain Python numbers, safe to log).

    mu, var, a, b: method-of-moments fit over the non-singleton questions' p_hat.
    alpha, beta: the normaliser's parameters actually used.
    num_questions: distinct uids in the batch; num_fit: those in the fit (non-singleton).
    num_singleton: questions with one sample (advantage 0, kept out of the fit).
    num_degenerate: non-singleton questions whose rewards are all equal (advantage 0).
    num_excluded: samples without response tokens (e.g. verl's padding rows): advantage 0, not in any group.
    num_broadcast: non-final outputs of multi-output agent-loop sessions: not in the groups; they take the
        advantage of their session's final output (verl's convention for grpo).
    fit_weight: how many questions the fit stands on: num_fit for the paper's per-batch fit, the
        exponentially weighted count of every batch's questions with ``fit_halflife``.
    weight_max, clamped_frac: largest 1/f_N and fraction of samples whose weight hit max_weight,
        over the samples that carry signal (non-singleton, non-constant questions).
    fallback: None, or why (alpha, beta) fell back to (1, 1).
    eb_lambda, eb_tau2: ``baseline: eb_loo`` and ``posterior_mean`` only (None otherwise, and not logged): the
        mean weight lambda of the batch / prior mean in the baseline, over the questions with >= 2 samples, and
        the deconvolved variance tau^2 of the success rates it was computed from (``bnpo.core.baselines``).
    components: AD-BNPO only: the statistics of each component, by reward key. The top level then holds
        the counts, the maxima of weight_max / clamped_frac and the first fallback, and None for the fit's
        numbers (FIT_NAMES): an average of different components' fits describes no distribution.
    """

    mu: Optional[float]
    var: Optional[float]
    a: Optional[float]
    b: Optional[float]
    alpha: Optional[float]
    beta: Optional[float]
    num_questions: int
    num_fit: int
    num_singleton: int
    num_degenerate: int
    weight_max: float
    clamped_frac: float
    fallback: Optional[str] = None
    num_excluded: int = 0
    num_broadcast: int = 0
    fit_weight: Optional[float] = 0.0
    eb_lambda: Optional[float] = None
    eb_tau2: Optional[float] = None
    components: dict[str, "BNPOStats"] = field(default_factory=dict)

    def to_metrics(self, prefix: str = "bnpo") -> dict[str, float]:
        """Flat ``{prefix}/{name}`` metrics (and ``{prefix}/{component}/{name}`` for AD-BNPO)."""
        metrics = {f"{prefix}/{name}": float(getattr(self, name)) for name in METRIC_NAMES if getattr(self, name) is not None}
        metrics[f"{prefix}/fallback"] = float(self.fallback is not None)
        for key, sub in self.components.items():
            metrics.update(sub.to_metrics(f"{prefix}/{key}"))
        return metrics

    def as_dict(self) -> dict:
        return asdict(self)
