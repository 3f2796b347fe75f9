"""bnpo in verl's v1 trainer, every mode: ``PPOTrainer._compute_advantage`` as the advantage step of the trainer
contract (``bnpo.verl.contract``), its scope holding ad_bnpo's reward scores and the agent-loop sessions from
TransferQueue, which verl does not hand the estimator."""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any, Optional

import numpy as np
import transfer_queue as tq

from . import compat, contract

logger = logging.getLogger(__name__)


def require_transfer_queue(batch: Any, estimator: str) -> None:
    """Stop the advantage step unless TransferQueue can read ``batch``: verl PR #7415 makes the rollout-data backend
    pluggable, and another backend's batch would fail deep inside TransferQueue or verl without naming bnpo."""
    if not isinstance(batch, tq.KVBatchMeta):
        kind = type(batch)
        found = f"the step's batch is a {kind.__module__}.{kind.__qualname__}, not TransferQueue's KVBatchMeta"
    elif not callable(getattr(tq, "kv_batch_get", None)):
        found = f"the installed TransferQueue ({getattr(tq, '__version__', 'unknown version')}) has no kv_batch_get"
    else:
        return
    raise compat.VerlChanged(
        f"algorithm.adv_estimator={estimator} in verl's v1 trainer reads each sample's reward scores and agent-loop "
        f"session from TransferQueue (transfer_queue.kv_batch_get on the batch's KVBatchMeta), but {found}: the "
        "trainer keeps its rollout data in another backend. Use verl's TransferQueue rollout-data backend (the "
        "default), or the legacy trainer (trainer.use_v1=False), which hands the advantage step its data itself."
    )


def reward_fields(batch: Any, components: list[str]) -> dict[str, np.ndarray]:
    """key -> (bs,) reward scores of ``batch`` (a KVBatchMeta): ``reward_extra_info``, else (colocated) top-level."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = list(data["extra_fields"]) if "extra_fields" in data.keys() else [None] * len(batch.keys)
    infos = [row.get("reward_extra_info", {}) if isinstance(row, dict) else {} for row in rows]
    keys = sorted({key for info in infos for key in info})  # (bs,) object arrays: np.array would stack lists into 2-D
    fields = {key: np.fromiter((info.get(key) for info in infos), object) for key in keys}
    for key in components:
        if key not in fields:
            top = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[key])
            if key in top.keys():
                fields[key] = np.fromiter(top[key], object)
    return fields


def final_rows(keys: list[str]) -> Optional[np.ndarray]:
    """(bs,) row of each sample's session's final output, from verl's keys ``{uid}_{session_id}_{index}``; None when
    every session has one output or the keys are not in that format (then every sample counts on its own)."""
    if not keys:
        return None
    parts = np.char.rpartition(np.asarray(keys, dtype=str), "_")  # vectorised: no Python loop over samples
    session, index_text = parts[:, 0], parts[:, 2]
    if not (np.char.isdigit(index_text).all() and (np.char.find(session, "_") >= 0).all()):
        logger.warning("bnpo: TransferQueue keys are not verl's {uid}_{session_id}_{index} (e.g. %r); every output "
                       "counts as a sample of its question.", keys[0])
        return None
    index = index_text.astype(np.int64)
    if not index.any():
        return None
    _, code = np.unique(session, return_inverse=True)
    order = np.lexsort((index, code))  # by session, then output index: each session's last row is its final
    last = np.append(code[order][1:] != code[order][:-1], True)
    final_of_session = np.empty(code.max() + 1, dtype=np.int64)
    final_of_session[code[order][last]] = order[last]
    return final_of_session[code]


ADVANTAGE = "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage"


def extend(original):
    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics: dict):
        if not compat.uses_bnpo(self.config):
            return original(self, batch, metrics)
        cfg = contract.checked_config(self, "v1")
        require_transfer_queue(batch, self.config.algorithm.adv_estimator)
        ad_bnpo = self.config.algorithm.adv_estimator == "ad_bnpo"
        fields = reward_fields(batch, list(cfg.components or [])) if ad_bnpo else {}
        with contract.advantage_step(self, "v1", ADVANTAGE, fields, final_rows(list(batch.keys))) as step:
            batch = original(self, batch, metrics)
        metrics.update(step.metrics)
        return batch

    return _compute_advantage


def install(trainer_base: ModuleType) -> None:
    """Extend ``PPOTrainer`` of verl's ``trainer_base`` (every place is checked before anything is patched)."""
    compat.require_all(trainer_base)
    compat.patch(trainer_base.PPOTrainer, "_compute_advantage", extend)
    contract.check_at_construction(trainer_base.PPOTrainer, lambda trainer: "v1")
