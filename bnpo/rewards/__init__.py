"""The paper's math rewards for verl: answer accuracy (math-verify) and the R1 output format.

    reward.custom_reward_function.path=pkg://bnpo.rewards      # or /path/to/bnpo/rewards/score.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_reward=true   # optional, for AD-BNPO

``score`` holds ``compute_score``; ``verify`` the authors' math-verify settings and what a worker runs;
``pool`` the worker processes (pebble's) that bound each call's time. Needs math-verify and pebble
(``bnpo[rewards]``).
"""

from .score import DEFAULT_TIMEOUT_S, TAIL_CHARS, compute_score, r1_format_score, stats, verify_answer

__all__ = ["DEFAULT_TIMEOUT_S", "TAIL_CHARS", "compute_score", "r1_format_score", "stats", "verify_answer"]
