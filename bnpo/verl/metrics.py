"""The names bnpo logs its statistics under, safe for verl's metrics aggregator.

verl's v1 ``MetricsAggregator`` (``verl/trainer/ppo/v1/utils.py``) reduces a metric over a step's local updates by its
lower-cased name: ``max`` -> maximum, ``min`` -> minimum, ``sum`` / ``total`` -> sum, otherwise the sample-weighted
mean, which bnpo means for every statistic but ``weight_max``. An ad_bnpo component's reward key may contain such a
word: its segment is written with a ``-`` after each such word's first letter (``t-otal``, ``m-ax_len``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from ..core.config import _key
from ..core.stats import BNPOStats

# the words verl's MetricsAggregator looks for in a lower-cased name; besides them it lists exact names (all outside
# bnpo/), the suffixes /lr and _lr (no bnpo name ends so) and timing_s/, timing_per_token_ms/ (which contain "min")
_AGGREGATOR_WORDS = re.compile("max|min|sum|total", re.IGNORECASE)


def component_segment(component: str) -> str:
    """``component`` as it appears in ``bnpo/<component>/<statistic>``: unchanged unless it contains one of the words
    verl's aggregator reduces by, each then split after its first letter (``total_len`` -> ``t-otal_len``)."""
    segment = str(component)
    while (match := _AGGREGATOR_WORDS.search(segment)) is not None:  # a split can reveal an overlapping word
        segment = f"{segment[:match.start() + 1]}-{segment[match.start() + 1:]}"
    return segment


def check_component_names(components: Iterable[str]) -> None:
    """Two components must not log under the same name (``max`` and ``m-ax``)."""
    seen: dict[str, str] = {}
    for component in components:
        segment = component_segment(component)
        if segment in seen:
            raise ValueError(
                f"{_key('components')}: {seen[segment]!r} and {component!r} would both log as bnpo/{segment}/... "
                "(verl's metrics aggregator reads max / min / sum / total in a name, so bnpo splits those words): "
                "rename one of the reward keys."
            )
        seen[segment] = str(component)


def metrics_of(stats: BNPOStats, prefix: str = "bnpo") -> dict[str, float]:
    """The step's metrics: ``bnpo/<statistic>``, and ``bnpo/<component>/<statistic>`` for each ad_bnpo component."""
    metrics = dataclasses.replace(stats, components={}).to_metrics(prefix)
    for component, sub in stats.components.items():
        metrics.update(metrics_of(sub, f"{prefix}/{component_segment(component)}"))
    return metrics
