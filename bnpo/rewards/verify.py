"""The paper's accuracy check (math-verify), and the processes that run it for bnpo.rewards.

The settings are the authors' (changyi7231/BNPO, recipe/bnpo/src/reward_manager.py), written out
as data so that the recipe's parity table can be checked against them:

* the gold answer is wrapped in ``\\boxed{}`` and parsed with :data:`GOLD_PARSE`;
* the model output's last :data:`TAIL_CHARS` characters are parsed with :data:`PRED_PARSE`;
* ``acc`` is ``math_verify.verify(gold, pred)`` with math-verify's default comparison settings;
  no parsed gold, no parsed prediction or an error in ``verify`` is ``acc = 0``.

Process layout (why: math-verify can run for minutes on adversarial text, and its own timeouts use
``signal.alarm``, which only works in a main thread, while verl calls reward functions from many
threads). This file, run as a script, is a *server*: it imports math-verify once and then forks one
*worker* per request of the caller (bnpo/rewards/pool.py), handing the worker's socket back over a
Unix socket. A fork of the warm server takes milliseconds, so a worker that overran its deadline is
killed and replaced without paying the start-up again. Only the standard library is imported at
module level; math-verify is imported by the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

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
# server and workers (this file run as a script)
# ---------------------------------------------------------------------------------------------


def _serve_worker(sock: socket.socket, parsers: tuple) -> None:
    """Answer JSON-line requests ``{"gold", "output"}`` on ``sock`` until it closes."""
    if _WORKER_MEM_MB > 0:
        try:
            import resource

            limit = _WORKER_MEM_MB * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    from math_verify.errors import TimeoutException  # a BaseException

    stream = sock.makefile("rwb")
    for line in stream:
        try:
            req = json.loads(line)
            reply = check(req["gold"], req["output"], parsers)
        except (Exception, TimeoutException) as e:  # MemoryError, RecursionError, anything sympy raises
            reply = {"acc": False, "pred": "", "error": type(e).__name__}
        stream.write((json.dumps(reply) + "\n").encode())
        stream.flush()


def _self_test(parsers: tuple) -> str:
    """'' if math-verify works here; otherwise what is wrong (a broken install scores every answer 0)."""
    try:
        ok = check("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$", parsers)["acc"]
        return "" if ok else "math-verify does not recognise 1/2 = 0.5"
    except BaseException as e:  # noqa: BLE001 -- reported to the caller, which logs it
        return f"{type(e).__name__}: {e}"


def serve(control_fd: int) -> None:
    """The server: one byte on the control socket -> fork a worker, send back (pid, worker socket)."""
    logging_off()
    parsers = (parse_kwargs(GOLD_PARSE), parse_kwargs(PRED_PARSE))
    control = socket.socket(fileno=control_fd)
    control.sendall((json.dumps({"ready": True, "problem": _self_test(parsers)}) + "\n").encode())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed workers are reaped by the kernel
    while True:
        request = control.recv(1)
        if not request:  # the caller is gone
            os._exit(0)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            control.close()
            ours.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _serve_worker(theirs, parsers)
            finally:
                os._exit(0)
        theirs.close()
        socket.send_fds(control, [pid.to_bytes(8, "little")], [ours.fileno()])
        ours.close()


def logging_off() -> None:
    import logging

    logging.disable(logging.WARNING)  # math-verify logs every timeout; the caller counts them instead


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve":
    serve(int(sys.argv[2]))
