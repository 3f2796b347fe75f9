"""Rule-based reward of the CPU smoke run (verl ``reward.custom_reward_function``).

Two binary components, so the same file serves BNPO (``score``) and AD-BNPO (``acc`` + ``format``):

- ``acc``: the response contains the correct digit as a word;
- ``format``: the response's first word is a digit.

``score`` is ``acc``. Each is 0 or 1, the range BNPO's Beta fit assumes.
"""

from __future__ import annotations

from typing import Any, Optional

_DIGITS = frozenset("0123456789")


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Optional[dict] = None, **kwargs: Any
) -> dict[str, float]:
    words = solution_str.split()
    acc = float(str(ground_truth).strip() in words)
    fmt = float(bool(words) and words[0] in _DIGITS)
    return {"score": acc, "acc": acc, "format": fmt}
