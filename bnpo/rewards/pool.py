"""Caller side of the accuracy check: verification workers with a deadline per call.

``Pool.check(ground_truth, output, timeout_s)`` returns within ``timeout_s`` of the moment it is
called, from any number of threads: waiting for a free worker and the check itself count against
the same deadline, and a worker that overruns it is killed (SIGKILL) and forgotten. Workers are
forked from the server of bnpo/rewards/verify.py, which has math-verify imported already, so a new
or replacement worker costs a few milliseconds (the fork itself is not interrupted; that is the
only slack past the deadline), not a Python start-up.

The one exception to the deadline: calls made while the server itself is starting (once per
process, a second or two for ``import sympy``) wait for it first, up to ``BNPO_REWARD_STARTUP_TIMEOUT``
seconds, so that no answer scores 0 because the process has just started.

Only the standard library is imported here.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Optional

logger = logging.getLogger("bnpo.rewards")

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify.py")
STARTUP_TIMEOUT_S = float(os.environ.get("BNPO_REWARD_STARTUP_TIMEOUT", "120"))
_FORK_TIMEOUT_S = 30.0  # a healthy server forks in milliseconds; past this it is broken


class RewardSetupError(RuntimeError):
    """math-verify cannot work in this environment: raised to the trainer instead of scoring every output 0."""


class _Deadline(Exception):
    """The call's deadline passed; the argument is the stats key: "no_worker" (still waiting for a
    worker) or "timeouts" (the check, or the fork before it, used the budget up)."""


def _read_line(sock: socket.socket, buf: bytearray, deadline: float) -> dict:
    """One JSON line from ``sock`` (bytes already received in ``buf``), or _Deadline."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            raise _Deadline("timeouts")
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("verification worker exited")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


class _Worker:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock, self.buf = pid, sock, bytearray()

    def ask(self, ground_truth: str, output: str, deadline: float) -> dict:
        self.sock.sendall((json.dumps({"gold": ground_truth, "output": output}) + "\n").encode())
        return _read_line(self.sock, self.buf, deadline)

    def close(self, kill: bool = True) -> None:
        """Close the socket; ``kill`` (SIGKILL) unless the worker is known to have exited already,
        whose pid may then belong to another process."""
        if kill:
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass
        self.sock.close()


class _Server:
    """The math-verify server process and its control socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", _WORKER_SCRIPT, "--serve", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
        )
        theirs.close()
        self.control, self.buf, self.lock = ours, bytearray(), threading.Lock()
        try:
            problem = _read_line(self.control, self.buf, time.monotonic() + STARTUP_TIMEOUT_S).get("problem")
        except (_Deadline, EOFError, ValueError) as e:
            self.close()
            raise RuntimeError(f"the math-verify server did not start within {STARTUP_TIMEOUT_S:.0f} s "
                               f"({type(e).__name__}); set BNPO_REWARD_STARTUP_TIMEOUT to wait longer") from None
        if problem:  # every acc would be 0: a run must not train on that
            self.close()
            raise RewardSetupError(f"bnpo.rewards: math-verify is broken in this environment ({problem}); "
                                   "reinstall it with pip install 'bnpo[rewards]'")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self) -> _Worker:
        """A new worker. Not bounded by the caller's deadline: a fork of the warm server takes
        milliseconds, and a reply left unread would desynchronise the control socket."""
        with self.lock:
            self.control.sendall(b"f")
            if not select.select([self.control], [], [], _FORK_TIMEOUT_S)[0]:
                self.close()
                raise RuntimeError(f"the math-verify server did not fork a worker within {_FORK_TIMEOUT_S:.0f} s")
            data, fds, _, _ = socket.recv_fds(self.control, 8, 1)
        if not fds:
            raise EOFError("the math-verify server exited")
        return _Worker(int.from_bytes(data, "little"), socket.socket(fileno=fds[0]))

    def close(self) -> None:
        self.control.close()
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass


class Pool:
    """At most ``size`` workers, forked on demand and kept for reuse; see the module docstring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.stats: Counter = Counter()  # calls, timeouts, no_worker, failures
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0  # idle + busy + being forked
        self._server: Optional[_Server] = None
        self._server_lock = threading.Lock()

    def forget(self) -> None:
        """In a forked copy of the calling process: the workers and the server belong to the parent."""
        self.__init__(self.size)

    def _ensure_server(self) -> _Server:
        with self._server_lock:
            if self._server is None or not self._server.alive():
                if self._server is not None:
                    self._drop_all()
                self._server = _Server()
            return self._server

    def _drop_all(self) -> None:
        with self._cond:
            for worker in self._idle:
                worker.close()
            self._live -= len(self._idle)
            self._idle.clear()

    def _acquire(self, server: _Server, deadline: float) -> _Worker:
        with self._cond:
            while not self._idle and self._live >= self.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Deadline("no_worker")
                self._cond.wait(left)
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return server.fork()
        except BaseException:
            self._release(None)
            raise

    def _release(self, worker: Optional[_Worker]) -> None:
        with self._cond:
            if worker is None:
                self._live -= 1
            else:
                self._idle.append(worker)
            self._cond.notify()

    def check(self, ground_truth: str, output: str, timeout_s: float) -> dict:
        server = self._ensure_server()
        deadline = time.monotonic() + timeout_s
        worker = None
        self._count("calls")
        try:
            worker = self._acquire(server, deadline)
            if time.monotonic() >= deadline:  # the fork took the rest of the budget; keep the worker
                self._release(worker)
                worker = None
                raise _Deadline("timeouts")
            reply = worker.ask(ground_truth, output, deadline)
        except _Deadline as e:
            kind = e.args[0]
            self._count(kind)
            if kind == "no_worker":
                logger.warning("bnpo.rewards: all %d verification workers stayed busy for timeout_s=%s; scoring 0 "
                               "(raise BNPO_REWARD_WORKERS or timeout_s)", self.size, timeout_s)
            self._discard(worker)
            return {"acc": False, "pred": "", "error": "timeout"}
        except Exception as e:  # noqa: BLE001 -- broken pipe, worker crash, server gone
            self._count("failures")
            logger.warning("bnpo.rewards: verification failed (%s: %s); scoring 0", type(e).__name__, e)
            self._discard(worker, kill=not isinstance(e, (EOFError, ConnectionError)))
            return {"acc": False, "pred": "", "error": type(e).__name__}
        self._release(worker)
        return reply

    def _discard(self, worker: Optional[_Worker], kill: bool = True) -> None:
        if worker is not None:
            worker.close(kill)
            self._release(None)

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def close(self) -> None:
        self._drop_all()
        with self._server_lock:
            if self._server is not None:
                self._server.close()
                self._server = None
