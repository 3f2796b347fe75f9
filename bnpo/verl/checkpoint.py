"""A trainer's pooled Beta fits (``algorithm.bnpo.fit_halflife``) saved with verl's checkpoints and restored on resume.

Wraps ``_save_checkpoint`` / ``_load_checkpoint`` of verl's v1 ``PPOTrainer`` and legacy ``RayPPOTrainer`` (both save
to ``<trainer.default_local_dir>/global_step_<N>/``). ``bnpo_state.json`` is written there *before* verl's own save,
so it is on disk before verl marks the checkpoint complete or hands the folder to ``checkpoint_callback.on_save``
(copied to ``<default_hdfs_dir>/global_step_<N>/`` too). After verl resumes from step N, that folder's file restores
the pools; a fresh start, or a checkpoint without it (which is logged), begins with empty pools.
"""

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


def step_folder(trainer: Any) -> Optional[str]:
    """The ``global_step_<N>`` folder verl saves to or resumed from at the trainer's step (None before any step)."""
    if not getattr(trainer, "global_steps", 0):
        return None
    config = trainer.config.trainer
    folder = _step_in(config.default_local_dir, trainer)
    if config.get("resume_mode", "auto") == "resume_path" and config.get("resume_from_path"):
        given = str(config.resume_from_path)  # verl resumes from it when it names this step
        if f"global_step_{trainer.global_steps}" in os.path.basename(os.path.normpath(given)):
            folder = given
    return os.path.abspath(folder)


def write_state(trainer: Any) -> Optional[str]:
    """Write the trainer's pooled fits into the checkpoint folder of its current step; returns the local path."""
    state = fit_state_of(trainer).state_dict()
    folder = _step_in(trainer.config.trainer.default_local_dir, trainer)
    if not state:
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)
    remote_root = trainer.config.trainer.get("default_hdfs_dir", None)
    if remote_root:
        from verl.utils import hdfs_io

        remote = _step_in(remote_root, trainer)
        hdfs_io.makedirs(remote, exist_ok=True)
        hdfs_io.copy(path, os.path.join(remote, STATE_FILE))
    return path


def read_state(trainer: Any) -> None:
    """Replace the trainer's pooled fits with those of the checkpoint verl resumed from (or none)."""
    state = fit_state_of(trainer)
    state.clear()  # a run starts from its checkpoint's pools or from none, never from a previous run's
    folder = step_folder(trainer)
    if folder is None:
        return
    path = os.path.join(folder, STATE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            state.load_state_dict(json.load(f))
        logger.info("bnpo: restored the pooled Beta fits of %s", path)
    elif (trainer.config.algorithm.get("bnpo", None) or {}).get("fit_halflife", None):
        logger.warning("bnpo: %s has no %s; algorithm.bnpo.fit_halflife starts from an empty pool.", folder, STATE_FILE)


def _saving(save):
    @functools.wraps(save)
    def _save_checkpoint(self, *args, **kwargs):
        write_state(self)
        return save(self, *args, **kwargs)

    return _save_checkpoint


def _loading(load):
    @functools.wraps(load)
    def _load_checkpoint(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        read_state(self)
        return result

    return _load_checkpoint


def install(trainer_cls: type) -> None:
    """Extend ``trainer_cls._save_checkpoint`` and ``._load_checkpoint``."""
    compat.patch(trainer_cls, "_save_checkpoint", _saving)
    compat.patch(trainer_cls, "_load_checkpoint", _loading)
