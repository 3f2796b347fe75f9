"""A trainer's pooled Beta fits (``algorithm.bnpo.fit_halflife``) saved with verl's checkpoints and restored on resume:
written *before* verl's own save, so they are there when verl marks the checkpoint complete."""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Optional

from . import compat
from .context import fit_state_of

logger = logging.getLogger(__name__)

STATE_FILE = "bnpo_state.json"


def _step_in(root: Any, trainer: Any) -> str:
    return os.path.join(str(root), f"global_step_{trainer.global_steps}")


def write_state(trainer: Any) -> Optional[str]:
    """Write the trainer's pooled fits into the checkpoint folder of its current step; returns the local path."""
    state = fit_state_of(trainer).state_dict()
    if not state:
        return None
    config = trainer.config.trainer
    folder = _step_in(config.default_local_dir, trainer)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)
    if config.get("default_hdfs_dir", None):
        from verl.utils import hdfs_io

        remote = _step_in(config.default_hdfs_dir, trainer)
        hdfs_io.makedirs(remote, exist_ok=True)
        hdfs_io.copy(path, os.path.join(remote, STATE_FILE))
    return path


def read_state(trainer: Any) -> None:
    """Replace the trainer's pooled fits with those of the checkpoint verl resumed from (or none)."""
    state = fit_state_of(trainer)
    state.clear()  # a run starts from its checkpoint's pools or from none, never from a previous run's
    if not getattr(trainer, "global_steps", 0):
        return
    config = trainer.config.trainer
    folder = _step_in(config.default_local_dir, trainer)
    given = config.get("resume_from_path") if config.get("resume_mode", "auto") == "resume_path" else None
    if given and f"global_step_{trainer.global_steps}" in os.path.basename(os.path.normpath(str(given))):
        folder = str(given)  # verl resumes from it when it names this step
    folder = os.path.abspath(folder)
    path = os.path.join(folder, STATE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            state.load_state_dict(json.load(f))
        logger.info("bnpo: restored the pooled Beta fits of %s", path)
    elif (trainer.config.algorithm.get("bnpo", None) or {}).get("fit_halflife", None):
        logger.warning("bnpo: %s has no %s; algorithm.bnpo.fit_halflife starts from an empty pool.", folder, STATE_FILE)


def _around(method: Any, before: Any = None, after: Any = None) -> Any:
    """``method`` calling ``before(self)`` ahead of itself and ``after(self)`` once it returns."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if before is not None:
            before(self)
        result = method(self, *args, **kwargs)
        if after is not None:
            after(self)
        return result

    return wrapper


def install(trainer_cls: type) -> None:
    """Extend ``trainer_cls._save_checkpoint`` and ``._load_checkpoint``."""
    compat.patch(trainer_cls, "_save_checkpoint", lambda save: _around(save, before=write_state))
    compat.patch(trainer_cls, "_load_checkpoint", lambda load: _around(load, after=read_state))
