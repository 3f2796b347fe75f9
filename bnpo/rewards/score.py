"""The paper's math rewards as verl's custom reward function, ``compute_score`` (bnpo/rewards/__init__.py: how).

Both rewards are the authors' (changyi7231/BNPO, recipe/bnpo/src/reward_manager.py): the accuracy check's parse
settings are in bnpo/rewards/verify.py, the format rule is :func:`r1_format_score`, and with the format reward on the
score is ``acc + format`` (in [0, 2]). verl's reward loop stores every key of the returned dict per sample, so ``acc``
and ``format`` reach the batch's ``non_tensor_batch``, where ``ad_bnpo`` reads them as its components. Where the
authors' code raises (a non-text output or gold answer, a data source outside their list) this one scores 0 or
converts, and it bounds each call's time (bnpo/rewards/pool.py). A math-verify that cannot work at all raises
``RewardSetupError`` instead of scoring every output 0.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import math
import numbers
import os
from typing import Any, Optional

from bnpo.rewards import pool as reward_pool  # absolute: the file may also be loaded by path
from bnpo.rewards import verify as reward_verify

logger = logging.getLogger(__name__)

if importlib.util.find_spec("math_verify") is None:  # fail at load time, not with a silent 0 reward
    raise ImportError("bnpo.rewards needs math-verify: pip install 'bnpo[rewards]' (math-verify[antlr4_9_3])")

DEFAULT_TIMEOUT_S = 10.0
TAIL_CHARS = reward_verify.TAIL_CHARS
_KEY = "reward.custom_reward_function.reward_kwargs"
# keywords verl's reward managers pass besides the four row fields; anything else is a typo
_VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})

_POOL = reward_pool.Pool(max(1, int(os.environ.get("BNPO_REWARD_WORKERS", "8"))))
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL.forget)

_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


def r1_format_score(solution_str: str) -> float:
    """1.0 iff the output is exactly ``<think>A</think><answer>B</answer>``, each tag once.

    The authors' rule: nothing before ``<think>`` or after ``</answer>`` (not even whitespace or a
    newline), nothing between ``</think>`` and ``<answer>``, any text (whitespace included) inside
    the tags. Linear in the length of the output (string scans, no backtracking regex).
    """
    text = solution_str
    if not (text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE)):
        return 0.0
    if any(text.count(tag) != 1 for tag in (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)):
        return 0.0
    return 1.0 if _THINK_CLOSE + _ANSWER_OPEN in text else 0.0


def stats() -> dict:
    """Counts of this process's accuracy checks: calls, timeouts, no_worker, failures."""
    return dict(_POOL.stats)


def _text(value: Any) -> Optional[str]:
    """A row's ground truth or an output as text; None for values that are no answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # None, NaN below, lists, dicts
        return None
    if not math.isfinite(value):
        return None
    if isinstance(value, numbers.Integral) or float(value).is_integer():
        return str(int(value))  # amc23 stores 27.0 for 27
    return str(value)


def verify_answer(solution_str: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[float, str]:
    """The paper's accuracy of one output. Returns (acc in {0.0, 1.0}, extracted prediction or "")."""
    reply = _POOL.check(ground_truth, solution_str[-TAIL_CHARS:], float(timeout_s))
    return (1.0 if reply.get("acc") else 0.0), str(reply.get("pred", ""))


def compute_score(
    data_source: Any = None,
    solution_str: Any = "",
    ground_truth: Any = "",
    extra_info: Optional[dict] = None,
    format_reward: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> dict:
    """verl reward function: the paper's accuracy (and optionally format) reward of one output.

    Args:
        data_source, extra_info: the row's; unused (every source is scored the same way).
        solution_str: the decoded model output.
        ground_truth: the row's ``reward_model.ground_truth`` (an answer, without ``\\boxed``).
        format_reward: also score the R1 format (verl: ``reward_kwargs.format_reward=true``).
        timeout_s: the whole call returns within this many seconds; a check still running then is
            killed and scores 0.
        **kwargs: the keywords verl's reward managers add (others are refused).

    Returns:
        dict: ``acc`` (0/1), ``pred`` (str), ``score`` = acc; with ``format_reward`` also ``format``
        (0/1) and ``score`` = acc + format, in [0, 2] (plain bnpo then needs
        ``algorithm.bnpo.reward_max=2``; ad_bnpo reads ``acc`` and ``format``, each in [0, 1]).

    Raises:
        ValueError: a bad setting (``timeout_s`` not a finite number > 0, ``format_reward`` not a
            bool, an unknown keyword). Bad outputs and answers never raise; they score 0.
    """
    unknown = sorted(set(kwargs) - _VERL_KWARGS)
    if unknown:
        raise ValueError(f"bnpo.rewards.compute_score: unknown keyword(s) {unknown} (from {_KEY}?); "
                         "it takes format_reward and timeout_s")
    if not isinstance(format_reward, bool):
        raise ValueError(f"{_KEY}.format_reward={format_reward!r} must be true or false")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not (0 < timeout_s < math.inf):
        raise ValueError(f"{_KEY}.timeout_s={timeout_s!r} must be a finite number of seconds > 0 "
                         f"(default {DEFAULT_TIMEOUT_S})")
    try:
        text, gold = _text(solution_str), _text(ground_truth)
        acc, pred = verify_answer(text, gold, timeout_s) if text and gold is not None and gold.strip() else (0.0, "")
        fmt = r1_format_score(text) if format_reward and text else 0.0
    except reward_pool.RewardSetupError:
        raise  # every output would score 0: stop the run instead
    except Exception as e:  # noqa: BLE001 -- keep training alive; the same keys as a normal result
        logger.warning("bnpo.rewards.compute_score failed (%s: %s); scoring 0", type(e).__name__, e)
        acc, pred, fmt = 0.0, "", 0.0
    result = {"score": acc, "acc": acc, "pred": pred}
    if format_reward:
        result.update(score=acc + fmt, format=fmt)
    return result
