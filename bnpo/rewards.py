"""Math rewards for BNPO runs: answer accuracy (math-verify) and the R1 output format.

Use as verl's custom reward function, by package or by file path::

    reward.custom_reward_function.path=pkg://bnpo.rewards      # or /path/to/bnpo/rewards.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_reward=true   # optional, for AD-BNPO

``compute_score`` returns ``{"score", "acc", "pred"}`` (plus ``"format"`` when the format reward is
on). verl's reward loop stores every key of that dict per sample, so ``acc`` and ``format`` reach the
batch's ``non_tensor_batch`` where ``ad_bnpo`` reads them as its components.

Why a subprocess: math-verify (sympy) can run for minutes, or hold the GIL inside a big-integer
operation, on adversarial text. Its own timeouts use ``signal.alarm``, which only works in the main
thread, and verl calls reward functions from executor threads inside Ray actors. So verification runs
in a small pool of long-lived worker processes (this very file, run as a script) that the caller
kills and replaces when a request overruns its deadline. A call therefore never raises and always
returns within ``timeout_s`` (plus a worker start-up, about a second, after a kill).

Only the standard library is imported here; math-verify is imported by the worker processes.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import Any, Optional

logger = logging.getLogger(__name__)

if importlib.util.find_spec("math_verify") is None:  # fail at load time, not with a silent 0 reward
    raise ImportError("bnpo.rewards needs math-verify: pip install 'bnpo[rewards]' (math-verify[antlr4_9_3])")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TAIL_CHARS = 500
# Start-up of a worker (python + sympy + math-verify imports); only paid on first use and after a kill.
_STARTUP_TIMEOUT_S = float(os.environ.get("BNPO_REWARD_STARTUP_TIMEOUT", "120"))
_MAX_WORKERS = max(1, int(os.environ.get("BNPO_REWARD_WORKERS", str(min(4, os.cpu_count() or 1)))))
# Address-space cap of a worker, so a runaway sympy expression fails with MemoryError instead of
# taking the node's memory; 0 disables it.
_WORKER_MEM_MB = int(os.environ.get("BNPO_REWARD_WORKER_MEM_MB", "8192"))

_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


# ---------------------------------------------------------------------------------------------
# format reward
# ---------------------------------------------------------------------------------------------


def r1_format_score(solution_str: str) -> float:
    """1.0 iff the output is ``<think>…</think><answer>…</answer>`` with each tag exactly once.

    Whitespace before, between and after the two blocks is allowed. Linear in the length of the
    output (string scans only, no backtracking regex).
    """
    text = solution_str.strip()
    tags = (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)
    if any(text.count(tag) != 1 for tag in tags):
        return 0.0
    if not (text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE)):
        return 0.0
    think_end = text.index(_THINK_CLOSE)
    answer_start = text.index(_ANSWER_OPEN)
    if answer_start < think_end or text[think_end + len(_THINK_CLOSE) : answer_start].strip():
        return 0.0
    return 1.0


# ---------------------------------------------------------------------------------------------
# accuracy: worker side (runs in a subprocess: `python rewards.py --serve`)
# ---------------------------------------------------------------------------------------------


def _serve() -> None:
    """Answer JSON-line requests ``{"gold", "pred", "t"}`` with ``{"acc", "pred"}`` until stdin closes."""
    if _WORKER_MEM_MB > 0:
        try:
            import resource

            limit = _WORKER_MEM_MB * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    logging.disable(logging.WARNING)  # math-verify logs every timeout; the caller counts them instead
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException  # a BaseException

    failures = (Exception, TimeoutException)

    out = sys.stdout
    try:  # a broken install (e.g. the wrong antlr4 runtime) would otherwise score every answer 0
        works = bool(verify(parse("$\\frac{1}{2}$"), parse("$0.5$")))
        problem = "" if works else "math-verify does not recognise 1/2 = 0.5"
    except failures as e:
        problem = f"{type(e).__name__}: {e}"
    out.write(json.dumps({"ready": True, "problem": problem}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            # signal-based timeouts work here (main thread); they spare a kill in the common case
            inner = max(1, int(req["t"] / 3))
            gold = parse(req["gold"], parsing_timeout=inner)
            pred = parse(req["pred"], parsing_timeout=inner)
            acc = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=inner))
            shown = str(pred[-1] if isinstance(pred[-1], str) else pred[0]) if pred else ""
            reply = {"acc": acc, "pred": shown}
        except failures as e:  # MemoryError, RecursionError, anything sympy raises
            reply = {"acc": False, "pred": "", "error": type(e).__name__}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ---------------------------------------------------------------------------------------------
# accuracy: caller side
# ---------------------------------------------------------------------------------------------


class _WorkerTimeout(Exception):
    pass


class _Worker:
    """One verification subprocess, spoken to over pipes with a deadline per reply."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._buf = b""
        problem = self._read_line(_STARTUP_TIMEOUT_S).get("problem")
        if problem:
            logger.error("bnpo.rewards: math-verify is broken in this environment (%s); every acc will be 0. "
                         "Reinstall with pip install 'bnpo[rewards]'.", problem)

    def _read_line(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _WorkerTimeout()
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("reward worker exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def check(self, gold: str, pred: str, timeout_s: float) -> dict:
        self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred, "t": timeout_s}) + "\n").encode())
        self.proc.stdin.flush()
        return self._read_line(timeout_s)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


class _WorkerPool:
    """At most ``size`` workers, created on demand; a worker that misbehaves is killed and replaced."""

    def __init__(self, size: int) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._idle: "queue.LifoQueue[_Worker]" = queue.LifoQueue()
        self._all: set = set()
        self._lock = threading.Lock()
        self.timeouts = 0
        self.failures = 0

    def check(self, gold: str, pred: str, timeout_s: float) -> dict:
        with self._slots:
            worker = None
            try:
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    worker = _Worker()
                    with self._lock:
                        self._all.add(worker)
                reply = worker.check(gold, pred, timeout_s)
            except _WorkerTimeout:
                with self._lock:
                    self.timeouts += 1
                self._drop(worker)
                return {"acc": False, "pred": "", "error": "timeout"}
            except Exception as e:  # broken pipe, worker crash, spawn failure
                with self._lock:
                    self.failures += 1
                logger.warning("bnpo.rewards: verification worker failed (%s); scoring 0", e)
                self._drop(worker)
                return {"acc": False, "pred": "", "error": type(e).__name__}
            self._idle.put(worker)
            return reply

    def _drop(self, worker: Optional[_Worker]) -> None:
        if worker is not None:
            worker.kill()
            with self._lock:
                self._all.discard(worker)

    def close(self) -> None:
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()


_POOL = _WorkerPool(_MAX_WORKERS)
atexit.register(_POOL.close)


def verify_answer(solution_str: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                  tail_chars: int = DEFAULT_TAIL_CHARS) -> tuple[float, str]:
    """Accuracy of one output: math-verify on ``\\boxed{ground_truth}`` vs the output's tail.

    Returns:
        (acc, pred): acc in {0.0, 1.0}; pred is the extracted prediction ("" if none / on failure).
    """
    if not solution_str or not ground_truth:
        return 0.0, ""
    gold = ground_truth if "\\boxed" in ground_truth else "\\boxed{" + ground_truth + "}"
    tail = solution_str[-tail_chars:] if tail_chars > 0 else solution_str
    reply = _POOL.check(gold, tail, timeout_s)
    return (1.0 if reply.get("acc") else 0.0), str(reply.get("pred", ""))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)) and len(value) == 1:  # some datasets store [answer]
        return _as_text(value[0])
    return str(value)


def compute_score(
    data_source: Any = None,
    solution_str: Any = "",
    ground_truth: Any = "",
    extra_info: Optional[dict] = None,
    format_reward: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    tail_chars: int = DEFAULT_TAIL_CHARS,
    **kwargs: Any,
) -> dict:
    """verl reward function: accuracy (and optionally format) of one math output. Never raises.

    Args:
        data_source: the row's ``data_source`` (unused: every math source is scored the same way).
        solution_str: the decoded model output.
        ground_truth: the row's ``reward_model.ground_truth`` (an answer, without ``\\boxed``).
        extra_info: the row's ``extra_info`` (unused).
        format_reward: also score the R1 format (verl: ``reward_kwargs.format_reward=true``).
        timeout_s: deadline of the math-verify check; past it the worker is killed and acc is 0.
        tail_chars: how much of the output's end is searched for the answer.
        **kwargs: other keywords verl may pass (ignored).

    Returns:
        dict: ``acc`` (0/1), ``pred`` (str), ``score`` = acc, or with ``format_reward`` also
        ``format`` (0/1) and ``score`` = (acc + format) / 2, which stays in [0, 1] (bnpo's default
        reward range). ad_bnpo reads ``acc`` and ``format`` separately.
    """
    try:
        text = _as_text(solution_str)
        acc, pred = verify_answer(text, _as_text(ground_truth).strip(), float(timeout_s), int(tail_chars))
        result = {"score": acc, "acc": acc, "pred": pred}
        if format_reward:
            fmt = r1_format_score(text)
            result["format"] = fmt
            result["score"] = (acc + fmt) / 2.0
        return result
    except Exception as e:  # keep training alive; the same keys as a normal result
        logger.warning("bnpo.rewards.compute_score failed (%s: %s); scoring 0", type(e).__name__, e)
        result = {"score": 0.0, "acc": 0.0, "pred": ""}
        if format_reward:
            result["format"] = 0.0
        return result



if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
