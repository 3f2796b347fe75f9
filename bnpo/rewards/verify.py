"""The paper's accuracy check (math-verify), and the processes that run it for bnpo.rewards.

The settings are the authors' (changyi7231/BNPO, recipe/bnpo/src/reward_manager.py), written out
as data so that the recipe's parity table can be checked against them:

* the gold answer is wrapped in ``\\boxed{}`` and parsed with :data:`GOLD_PARSE`;
* the model output's last :data:`TAIL_CHARS` characters are parsed with :data:`PRED_PARSE`;
* ``acc`` is ``math_verify.verify(gold, pred)`` with math-verify's default comparison settings;
  no parsed gold, no parsed prediction or an error in ``verify`` is ``acc = 0``.

Where it runs (why: math-verify can run for minutes on adversarial text, and its own timeouts use
``signal.alarm``, which only works in a main thread, while verl calls reward functions from many
threads): in the worker processes of bnpo/rewards/pool.py, which call :func:`init_worker` once and
:func:`run_check` per output. Only the standard library is imported at module level; math-verify is
imported by the workers (and their fork server, bnpo/rewards/_warm.py).
"""

from __future__ import annotations

import functools
import os
import signal

TAIL_CHARS = 500

# math_verify.parse(...) keywords and LatexExtractionConfig / NormalizationConfig fields, by name.
GOLD_PARSE = {
    "extraction_mode": "first_match",
    "fallback_mode": "no_fallback",
    "boxed_match_priority": 0,
    "try_extract_without_anchor": True,
    "basic_latex": True,
    "units": True,
    "malformed_operators": True,
    "nits": True,
    "boxed": "all",
    "equations": False,
}
PRED_PARSE = {
    **GOLD_PARSE,
    "fallback_mode": "first_match",
    "try_extract_without_anchor": False,
    "malformed_operators": False,
    "nits": False,
}
_PARSE_KEYS = ("extraction_mode", "fallback_mode")
_LATEX_KEYS = ("boxed_match_priority", "try_extract_without_anchor")
_NORMALIZATION_KEYS = ("basic_latex", "units", "malformed_operators", "nits", "boxed", "equations")

# Address-space cap of a worker, so a runaway sympy expression fails with MemoryError instead of
# taking the node's memory; 0 disables it.
_WORKER_MEM_MB = int(os.environ.get("BNPO_REWARD_WORKER_MEM_MB", "8192"))


def parse_kwargs(settings: dict) -> dict:
    """``math_verify.parse`` keyword arguments for GOLD_PARSE or PRED_PARSE (imports math-verify)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    normalization = NormalizationConfig(**{k: settings[k] for k in _NORMALIZATION_KEYS})
    latex = LatexExtractionConfig(normalization_config=normalization, **{k: settings[k] for k in _LATEX_KEYS})
    return {"extraction_config": [latex], **{k: settings[k] for k in _PARSE_KEYS}}


def check(ground_truth: str, output: str, parsers: tuple) -> dict:
    """``{"acc": bool, "pred": str}`` for one output: the paper's rule (module docstring)."""
    from math_verify import parse, verify

    gold_kwargs, pred_kwargs = parsers
    gold = parse("\\boxed{" + ground_truth + "}", **gold_kwargs)
    if not gold:
        return {"acc": False, "pred": "", "note": "gold_unparsed"}
    pred = parse(output[-TAIL_CHARS:], **pred_kwargs)
    if not pred:
        return {"acc": False, "pred": ""}
    try:
        acc = bool(verify(gold, pred))
    except Exception as e:  # noqa: BLE001 -- the paper scores a failing comparison 0
        return {"acc": False, "pred": str(pred[0]), "error": type(e).__name__}
    return {"acc": acc, "pred": str(pred[0])}


# ---------------------------------------------------------------------------------------------
# in the worker processes of bnpo/rewards/pool.py
# ---------------------------------------------------------------------------------------------


def init_worker() -> None:
    """pebble's initializer, once per worker: the memory cap, a SIGTERM that ends the worker at once, quiet logs."""
    # pebble stops a worker with SIGTERM and its own handler, which runs only when the C call under way (a sympy
    # power, say) returns, and waits 3 s before SIGKILL; the worker holds nothing that needs cleaning up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _WORKER_MEM_MB > 0:
        try:
            import resource

            limit = _WORKER_MEM_MB * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    logging_off()


@functools.lru_cache(maxsize=None)
def _parsers() -> tuple:
    return parse_kwargs(GOLD_PARSE), parse_kwargs(PRED_PARSE)


def run_check(ground_truth: str, output: str) -> dict:
    """:func:`check` with the paper's settings; whatever math-verify or sympy raises scores 0."""
    from math_verify.errors import TimeoutException  # a BaseException

    try:
        return check(ground_truth, output, _parsers())
    except (Exception, TimeoutException) as e:  # MemoryError (the cap), RecursionError, anything sympy raises
        return {"acc": False, "pred": "", "error": type(e).__name__}


def self_test() -> str:
    """'' if math-verify works here; otherwise what is wrong (a broken install scores every answer 0)."""
    try:
        ok = check("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$", _parsers())["acc"]
        return "" if ok else "math-verify does not recognise 1/2 = 0.5"
    except BaseException as e:  # noqa: BLE001 -- reported to the caller, which raises RewardSetupError
        return f"{type(e).__name__}: {e}"


def logging_off() -> None:
    import logging

    logging.disable(logging.WARNING)  # math-verify logs every timeout; the caller counts them instead
