"""Caller side of the accuracy check: pebble's process pool, with a deadline per call.

``Pool.check(ground_truth, output, timeout_s)`` returns within ``timeout_s`` of being called, from any number of
threads (verl calls the reward function from several): the wait for a worker and the check count against one
deadline, and pebble kills the worker of a check still running then and starts another. A call first takes one of
``size`` slots, held until pebble is done with its check, so checks wait for a worker here, against the deadline,
not in pebble's queue (which would still run a check whose caller gave up; cancelling it kills whichever worker
picks it up).

Workers are forked by multiprocessing's fork server, which imports and warms math-verify once (_warm.py): a
replacement is a fork of that small single-threaded process, not a Python start-up nor a fork of verl's
many-threaded reward worker (a check right after a killed one waits about 0.06 s, pebble's 0.1 s poll included).
Each child re-imports the caller's ``__main__`` (in verl, Ray's worker script: about 0.5 s), so a script that scores
outputs keeps its work under ``if __name__ == "__main__":``. Worker memory is capped (``BNPO_REWARD_WORKER_MEM_MB``).

The one exception to the deadline: a process's first call starts the pool and math-verify's self-test (a second or
two for ``import sympy``) and waits up to ``BNPO_REWARD_STARTUP_TIMEOUT`` seconds, so no answer scores 0 because the
process has just started.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional

import pebble

from bnpo.rewards import verify

logger = logging.getLogger("bnpo.rewards")

STARTUP_TIMEOUT_S = float(os.environ.get("BNPO_REWARD_STARTUP_TIMEOUT", "120"))
_TIMEOUT = {"acc": False, "pred": "", "error": "timeout"}
# the waits end this much before the deadline, so that the thread's wake-up and the cancel after them still fit in it
_MARGIN_S = 0.05


class RewardSetupError(RuntimeError):
    """math-verify cannot work in this environment: raised to the trainer instead of scoring every output 0."""


def _start(size: int) -> pebble.ProcessPool:
    """A started pool whose workers pass math-verify's self-test."""
    context = multiprocessing.get_context("forkserver")
    # process-wide, and only read when the fork server starts: one started earlier by other code has nothing preloaded,
    # and then each worker imports math-verify on its first check (correct, slower)
    context.set_forkserver_preload(["bnpo.rewards._warm"])
    pool = pebble.ProcessPool(size, initializer=verify.init_worker, context=context)
    try:
        problem = pool.schedule(verify.self_test).result(timeout=STARTUP_TIMEOUT_S)
    except FutureTimeout:
        pool.stop()
        raise RuntimeError(f"the math-verify workers did not start within {STARTUP_TIMEOUT_S:.0f} s; "
                           "set BNPO_REWARD_STARTUP_TIMEOUT to wait longer") from None
    except Exception as e:  # noqa: BLE001 -- a worker that cannot start (pebble: BrokenProcessPool)
        problem = f"{type(e).__name__}: {e}"
    if problem:  # every acc would be 0: a run must not train on that
        pool.stop()
        raise RewardSetupError(f"bnpo.rewards: math-verify is broken in this environment ({problem}); "
                               "reinstall it with pip install 'bnpo[rewards]'")
    return pool


class Pool:
    """``size`` workers, started with the first call; see the module docstring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.stats: Counter = Counter()  # calls, timeouts, no_worker, failures
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()  # held while a pool starts
        self._stats_lock = threading.Lock()
        self._pool: Optional[pebble.ProcessPool] = None

    def forget(self) -> None:
        """In a forked copy of the calling process: the pool, its threads and the fork server belong to the parent."""
        server = multiprocessing.forkserver._forkserver
        # the parent's fork server is no child of this process (os.waitpid on it fails): start another if needed.
        # No public call resets it; __init__ does, on the object multiprocessing's module functions are bound to.
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)  # so that the parent's server still stops when the parent does
        server.__init__()
        self.__init__(self.size)

    def _ensure_pool(self) -> pebble.ProcessPool:
        with self._lock:
            if self._pool is None or not self._pool.active:  # not started, or broken (its fork server killed)
                if self._pool is not None:
                    self._pool.stop()
                self._pool = _start(self.size)
            return self._pool

    def check(self, ground_truth: str, output: str, timeout_s: float) -> dict:
        pool = self._ensure_pool()
        deadline = time.monotonic() + timeout_s - _MARGIN_S
        self._count("calls")
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._count("no_worker")
            logger.warning("bnpo.rewards: all %d verification workers stayed busy for timeout_s=%s; scoring 0 "
                           "(raise BNPO_REWARD_WORKERS or timeout_s)", self.size, timeout_s)
            return dict(_TIMEOUT)
        left = deadline - time.monotonic()
        if left <= 0:
            self._slots.release()
            self._count("timeouts")
            return dict(_TIMEOUT)
        try:
            # pebble kills the worker of a check that runs past ``left`` (counted from the check's start); the slot is
            # freed when pebble is done with the check, so a worker is free again, or being replaced, by then
            future = pool.schedule(verify.run_check, (ground_truth, output), timeout=left)
        except Exception as e:  # noqa: BLE001 -- a pool that broke (its fork server killed): the next call restarts it
            self._slots.release()
            return self._failed(e)
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:  # the caller's deadline, or pebble's timeout
            if future.running():  # pebble kills its worker within 0.1 s (not waiting for its own timeout)
                future.cancel()
            self._count("timeouts")
            return dict(_TIMEOUT)
        except Exception as e:  # noqa: BLE001 -- a worker that died (memory, signal)
            return self._failed(e)

    def _failed(self, e: Exception) -> dict:
        self._count("failures")
        logger.warning("bnpo.rewards: verification failed (%s: %s); scoring 0", type(e).__name__, e)
        return {"acc": False, "pred": "", "error": type(e).__name__}

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join()
                self._pool = None
