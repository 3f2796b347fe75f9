"""The names bnpo logs its statistics under, safe for verl's v1 ``MetricsAggregator``, which reduces a metric by the
words ``max``, ``min``, ``sum`` / ``total`` in its lower-cased name and otherwise by the sample-weighted mean."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..core.config import _key
from ..core.stats import BNPOStats

# its other rules (exact names outside bnpo/, the suffixes /lr and _lr, timing_s/) match no bnpo name
_AGGREGATOR_WORDS = re.compile("max|min|sum|total", re.IGNORECASE)


def component_segment(component: str) -> str:
    """``component`` as it appears in ``bnpo/<component>/<statistic>`` (``total_len`` -> ``t-otal_len``)."""
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
    return stats.to_metrics(prefix, component_segment)
