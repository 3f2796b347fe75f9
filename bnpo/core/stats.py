"""Statistics of one estimator call, returned with the advantages for the trainer integration to log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

# One Beta fit's numbers: AD-BNPO's top level has one fit per component, so it reports none of these.
FIT_NAMES = ("mu", "var", "a", "b", "alpha", "beta", "eb_lambda", "eb_tau2")
METRIC_NAMES = FIT_NAMES[:6] + (
    "num_questions", "num_fit", "num_singleton", "num_degenerate", "num_excluded", "num_broadcast", "weight_max",
    "clamped_frac", "eb_lambda", "eb_tau2",
)


@dataclass(frozen=True)
class BNPOStats:
    """What one BNPO normalisation saw and did (plain Python numbers, safe to log).

    mu, var, a, b: the moments fit over the non-singleton questions' p_hat; alpha, beta: the normaliser used.
    num_questions: distinct uids; num_fit: those in the fit; num_singleton: one sample (advantage 0, not fitted);
    num_degenerate: non-singleton questions whose rewards are all equal (advantage 0). num_excluded: samples without
    response tokens (verl's padding rows), in no group; num_broadcast: non-final outputs of agent-loop sessions,
    which take their session's final advantage (verl's grpo). weight_max, clamped_frac: largest 1/f_N and fraction
    of samples at max_weight, over those with signal. fallback: None, or why (alpha, beta) fell back to (1, 1).
    eb_lambda, eb_tau2 (eb_loo): mean lambda over the questions with >= 2 samples and the deconvolved variance tau^2
    (``bnpo.core.baselines``). components: AD-BNPO's, by reward key; the top level then holds the counts, the maxima
    of weight_max / clamped_frac, the first fallback and None for FIT_NAMES.
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
    eb_lambda: Optional[float] = None
    eb_tau2: Optional[float] = None
    components: dict[str, "BNPOStats"] = field(default_factory=dict)

    def to_metrics(self, prefix: str = "bnpo", segment: Callable[[str], str] = str) -> dict[str, float]:
        """Flat ``{prefix}/{name}`` metrics (and ``{prefix}/{segment(component)}/{name}`` for AD-BNPO)."""
        metrics = {f"{prefix}/{n}": float(getattr(self, n)) for n in METRIC_NAMES if getattr(self, n) is not None}
        metrics[f"{prefix}/fallback"] = float(self.fallback is not None)
        for key, sub in self.components.items():
            metrics.update(sub.to_metrics(f"{prefix}/{segment(key)}", segment))
        return metrics
