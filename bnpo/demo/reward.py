"""The demo's verifiable rewards, as verl calls them (``reward.custom_reward_function.path=pkg://bnpo.demo.reward``)
on each response decoded without special tokens. Imports nothing heavy: it runs in every reward worker.
"""

from __future__ import annotations

from typing import Any, Optional


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Optional[dict] = None,
                  **kwargs: Any) -> float:
    """1.0 iff ``solution_str``'s words are exactly ``ground_truth``'s (the reversed digits; an answer that runs on to
    the length limit instead of ending scores 0), else 0.0."""
    return float(solution_str.split() == str(ground_truth).split())


def compute_score_format(data_source: str, solution_str: str, ground_truth: str, extra_info: Optional[dict] = None,
                         **kwargs: Any) -> dict[str, float]:
    """The two-reward task's reward, a dict as ``bnpo.rewards`` returns it: ``{"score": acc + format, "acc",
    "format"}``, each 0.0 or 1.0. ``acc``: the response's digits, other words ignored, are ``ground_truth``'s ("answer
    4 1 3" is accurate). ``format``: digits only, as many as the answer's, so it ended on time (the end-of-turn token
    itself is not seen; a run-on adds words): "3 1 4" is well formed."""
    words = solution_str.split()
    truth = str(ground_truth).split()
    acc = float([w for w in words if w.isdigit()] == truth)
    well_formed = float(len(words) == len(truth) and all(w.isdigit() for w in words))
    return {"score": acc + well_formed, "acc": acc, "format": well_formed}
