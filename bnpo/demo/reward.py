"""The demo's verifiable reward, as verl calls it (``reward.custom_reward_function.path=pkg://bnpo.demo.reward``).

verl's reward loop decodes each response without special tokens and calls ``compute_score`` from its reward
workers' threads. The answer to "reverse 3 1 4" is "4 1 3": the reward is 1.0 iff the response's words are
exactly the prompt's digits reversed (nothing before, nothing after: an answer that runs on to the length limit
instead of ending scores 0), else 0.0. Imports nothing heavy: it runs in every reward worker.
"""

from __future__ import annotations

from typing import Any, Optional


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Optional[dict] = None, **kwargs: Any
) -> float:
    """1.0 iff ``solution_str``'s words are ``ground_truth``'s (the reversed digits, space-separated), else 0.0."""
    return float(solution_str.split() == str(ground_truth).split())
