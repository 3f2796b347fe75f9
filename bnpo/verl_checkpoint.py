"""bnpo's pooled Beta fits (``algorithm.bnpo.fit_halflife``) saved with verl's checkpoints and restored on resume.

Wraps a trainer class's ``_save_checkpoint`` / ``_load_checkpoint`` (verl's v1 ``PPOTrainer`` and the legacy
``RayPPOTrainer`` lay checkpoints out alike: ``<trainer.default_local_dir>/global_step_<N>/``): after verl saves,
``bnpo_state.json`` is written beside its ``data.pt``; after verl has resumed from step N, the file of that
folder restores the pools. A fresh start, or a checkpoint without the file (saved by a run without bnpo, or
before it), begins with empty pools; the latter says so.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Optional

from . import pooling

logger = logging.getLogger(__name__)

STATE_FILE = "bnpo_state.json"


def step_folder(trainer: Any) -> Optional[str]:
    """The ``global_step_<N>`` folder verl just saved or resumed from (None before any step)."""
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


def install(trainer_cls: type) -> None:
    """Extend ``trainer_cls._save_checkpoint`` and ``._load_checkpoint`` (idempotent)."""
    save, load = trainer_cls._save_checkpoint, trainer_cls._load_checkpoint
    if getattr(save, "_bnpo_wrapped", False):
        return

    @functools.wraps(save)
    def _save_checkpoint(self, *args, **kwargs):
        result = save(self, *args, **kwargs)
        state = pooling.state_dict()
        folder = step_folder(self)
        if state and folder is not None:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, STATE_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump(state, f, indent=1)
            os.replace(path + ".tmp", path)
        return result

    @functools.wraps(load)
    def _load_checkpoint(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        folder = step_folder(self)
        path = os.path.join(folder, STATE_FILE) if folder is not None else None
        pooling.reset_pools()  # a run starts from its checkpoint's pools or from none, never from a previous run's
        if path is None:
            return result
        if os.path.exists(path):
            with open(path) as f:
                pooling.load_state_dict(json.load(f))
            logger.info("bnpo: restored the pooled Beta fits of %s", path)
        elif self.config.algorithm.get("bnpo", {}) and self.config.algorithm.bnpo.get("fit_halflife", None):
            logger.warning("bnpo: %s has no %s; algorithm.bnpo.fit_halflife starts from an empty pool.", folder, STATE_FILE)
        return result

    _save_checkpoint._bnpo_wrapped = True
    trainer_cls._save_checkpoint = _save_checkpoint
    trainer_cls._load_checkpoint = _load_checkpoint
