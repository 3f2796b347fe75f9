"""End a bnpo run whose Ray node died, instead of letting verl wait for it.

verl 0.9.1's v1 trainer waits for its rollout's samples in TransferQueue and does not notice that the workers making
them died with their node: the run can hang (docs/verl.md#multi-node). ``watch`` polls Ray's node table for the nodes
that hold the job's placement groups (verl's FSDP and vLLM workers) and, when one is dead, raises ``RayNodeLost``
naming it in the thread that built the trainer (verl's TaskRunner): the job fails with that error. A thread that does
not run Python within the grace (blocked in C) cannot take it: then the process exits, logging the same message.
``BNPO_NODE_WATCH_S``: seconds between polls (default 5; 0 turns the watch off).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from typing import Any, Optional

import ray

logger = logging.getLogger(__name__)

POLL_ENV = "BNPO_NODE_WATCH_S"
POLL_S = 5.0
_WATCH = "_bnpo_node_watch"  # on the trainer object: two trainers in one process have their own
GRACE_S = 10.0  # from the raise to the exit, when the trainer's thread does not take the error


class RayNodeLost(RuntimeError):
    """A Ray node that held this job's verl workers died."""

    def __reduce__(self):  # subclasses made by ``_raisable`` travel to Ray's driver as this class
        return RayNodeLost, self.args


def _raisable(message: str) -> type[RayNodeLost]:
    """A ``RayNodeLost`` class whose no-argument instance says ``message``: CPython raises an asynchronous exception
    by calling its class without arguments."""
    return type("RayNodeLost", (RayNodeLost,), {"__init__": lambda self: RayNodeLost.__init__(self, message)})


def _raise_in(thread_id: int, message: str) -> bool:
    """Raise ``RayNodeLost(message)`` in thread ``thread_id`` when it next runs Python; False if there is none."""
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_raisable(message)))
    return found == 1


def lost_nodes(job_id: str, watched: set[str]) -> list[dict]:
    """The dead nodes among ``watched`` and the nodes of the job's placement groups, which are added to ``watched``
    (a group moves off a dead node, so a node once seen stays watched). A placement group's id ends with its job's."""
    for group_id, group in ray.util.placement_group_table().items():
        if group_id.endswith(job_id):
            watched.update(group["bundles_to_node_id"].values())
    return [node for node in ray.nodes() if node["NodeID"] in watched and not node["Alive"]]


def _message(node: dict) -> str:
    reason = node.get("DeathReasonMessage") or "no reason given"
    return (f"Ray node {node['NodeID']} ({node.get('NodeManagerAddress', '?')}), which ran this run's verl workers, "
            f"died ({reason}). verl cannot train without them and may wait for their samples forever, so bnpo stops "
            "the run. Bring the node back (or give the job another), then submit the same command again: verl "
            "resumes from the latest checkpoint (trainer.resume_mode=auto).")


def _watch(owner: weakref.ref, thread_id: int, job_id: str, poll_s: float, grace_s: float,
           stop: threading.Event) -> None:
    watched: set[str] = set()
    while not stop.wait(poll_s):
        try:
            lost = lost_nodes(job_id, watched)
        except Exception as err:  # Ray's GCS unreachable: the run is failing on its own; keep quiet and retry
            logger.debug("bnpo: the node watch could not read Ray's tables: %s", err)
            continue
        if not lost:
            continue
        message = _message(lost[0])
        logger.error("bnpo: %s", message)
        if owner() is not None and _raise_in(thread_id, message) and not stop.wait(grace_s):
            logger.error("bnpo: the trainer's thread did not stop within %.0f s; exiting. %s", grace_s, message)
            logging.shutdown()
            os._exit(1)
        return


def watch(trainer: Any, poll_s: Optional[float] = None, grace_s: float = GRACE_S) -> Optional[threading.Thread]:
    """Watch the nodes of this Ray job's verl workers while ``trainer`` lives, for the calling thread, which runs its
    training (None: outside Ray, or ``BNPO_NODE_WATCH_S=0``). The watch ends when the trainer is collected."""
    if poll_s is None:
        try:
            poll_s = float(os.environ.get(POLL_ENV, POLL_S))
        except ValueError:
            raise ValueError(f"{POLL_ENV}={os.environ[POLL_ENV]!r} is not a number of seconds: set it to the seconds "
                             "between checks of the Ray nodes of the run (default 5), or 0 to turn them off") from None
    if poll_s <= 0 or not ray.is_initialized() or getattr(trainer, _WATCH, None) is not None:
        return getattr(trainer, _WATCH, None)  # a subclass's __init__ calling its base's: one watch per trainer
    stop = threading.Event()
    owner = weakref.ref(trainer, lambda _: stop.set())
    job_id = ray.get_runtime_context().get_job_id()
    thread = threading.Thread(target=_watch, args=(owner, threading.get_ident(), job_id, poll_s, grace_s, stop),
                              name="bnpo-node-watch", daemon=True)
    thread.start()
    setattr(trainer, _WATCH, thread)
    return thread
