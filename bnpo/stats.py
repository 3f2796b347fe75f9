"""Statistics of one estimator call, kept for the trainer integration to log without recomputation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

METRIC_NAMES = (
    "mu",
    "var",
    "a",
    "b",
    "alpha",
    "beta",
    "num_questions",
    "num_singleton",
    "num_degenerate",
    "num_excluded",
    "num_broadcast",
    "fit_weight",
    "weight_max",
    "clamped_frac",
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
    components: AD-BNPO only: the statistics of each component, by reward key.
    """

    mu: float
    var: float
    a: float
    b: float
    alpha: float
    beta: float
    num_questions: int
    num_fit: int
    num_singleton: int
    num_degenerate: int
    weight_max: float
    clamped_frac: float
    fallback: Optional[str] = None
    num_excluded: int = 0
    num_broadcast: int = 0
    fit_weight: float = 0.0
    components: dict[str, "BNPOStats"] = field(default_factory=dict)

    def to_metrics(self, prefix: str = "bnpo") -> dict[str, float]:
        """Flat ``{prefix}/{name}`` metrics (and ``{prefix}/{component}/{name}`` for AD-BNPO)."""
        metrics = {f"{prefix}/{name}": float(getattr(self, name)) for name in METRIC_NAMES}
        metrics[f"{prefix}/fallback"] = float(self.fallback is not None)
        for key, sub in self.components.items():
            metrics.update(sub.to_metrics(f"{prefix}/{key}"))
        return metrics

    def as_dict(self) -> dict:
        return asdict(self)


_LAST: Optional[BNPOStats] = None


def record(stats: BNPOStats) -> None:
    global _LAST
    _LAST = stats


def last_stats() -> Optional[BNPOStats]:
    """Statistics of the most recent bnpo / ad_bnpo call in this process (None before the first)."""
    return _LAST


def pop_last_stats() -> Optional[BNPOStats]:
    """Like last_stats, but clears them so a later step cannot log stale values."""
    global _LAST
    stats, _LAST = _LAST, None
    return stats
