"""A trainer's pooled Beta fits (``algorithm.bnpo.fit_halflife``) saved with verl's checkpoints and restored on resume.

Wraps a trainer class's ``_save_checkpoint`` / ``_load_checkpoint`` (verl's v1 ``PPOTrainer`` and the legacy
``RayPPOTrainer``, whose subclasses inherit it, lay checkpoints out alike: ``<trainer.default_local_dir>/global_step_<N>/``).

Saving: ``bnpo_state.json`` is written into ``global_step_<N>/`` *before* verl's own save runs, so it is on disk
before verl writes ``latest_checkpointed_iteration.txt`` and before it calls ``checkpoint_callback.on_save`` with
that folder (a run killed in between, or a callback that uploads the folder, never sees a checkpoint without
it); with ``trainer.default_hdfs_dir`` it is copied to ``<default_hdfs_dir>/global_step_<N>/`` as well, beside
verl's remote copy of the actor.

Resuming: after verl has resumed from step N, the file of that folder restores the trainer's pools. A fresh
start, or a checkpoint without the file (saved by a run without bnpo, or before it), begins with empty pools;
the latter says so.
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


def step_folder(trainer: Any) -> Optional[str]:
    """The ``global_step_<N>`` folder verl saves to or resumed from at the trainer's step (None before any step)."""
    if not getattr(trainer, "global_steps", 0):
        return None
    config = trainer.config.trainer
    if config.get("resume_mode", "auto") == "resume_path" and config.get("resume_from_path"):
        folder = str(config.resume_from_path)
        if f"global_step_{trainer.global_steps}" not in os.path.basename(os.path.normpath(folder)):
            folder = os.path.join(str(config.default_local_dir), f"global_step_{trainer.global_steps}")
    else:
        folder = os.path.join(str(config.default_local_dir), f"global_step_{trainer.global_steps}")
    return os.path.abspath(folder)


def write_state(trainer: Any) -> Optional[str]:
    """Write the trainer's pooled fits into the checkpoint folder of its current step; returns the local path."""
    state = fit_state_of(trainer).state_dict()
    folder = os.path.join(str(trainer.config.trainer.default_local_dir), f"global_step_{trainer.global_steps}")
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

        remote = os.path.join(str(remote_root), f"global_step_{trainer.global_steps}")
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
