"""bnpo in verl's v1 trainer, in every trainer mode (sync, colocate_async, separate_async).

``install`` wraps ``PPOTrainer._compute_advantage`` (``verl/trainer/ppo/v1/trainer_base.py``; every mode inherits it,
``_step_once`` calls it once per local update) as the trainer's advantage step of bnpo's trainer contract
(``bnpo.verl.contract``). Its scope holds what verl does not hand the estimator: ad_bnpo's reward scores and the
agent-loop sessions (keys ``{uid}_{session_id}_{index}``), both read from TransferQueue, and the trainer's pooled fits.
The metrics go into the local update's, which verl's ``MetricsAggregator`` reduces over the step. It also wraps
checkpointing (``bnpo.verl.checkpoint``) and ``PPOTrainer.__init__`` (the per-run check).
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any, Optional

import numpy as np
import transfer_queue as tq

from . import checkpoint, compat, contract

logger = logging.getLogger(__name__)


def _object_array(values: list) -> np.ndarray:
    """(bs,) object array of per-sample values (np.array would stack list-valued entries into 2-D)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def require_transfer_queue(batch: Any, estimator: str) -> None:
    """Stop the advantage step, saying what bnpo needs, unless ``batch`` is TransferQueue's and TransferQueue can
    read it.

    bnpo reads each sample's reward scores (ad_bnpo) and agent-loop session (its key) from TransferQueue, where
    verl 0.9's v1 trainer keeps its rollout data. verl PR #7415 makes that rollout-data backend pluggable: another
    backend's batch would otherwise fail deep inside TransferQueue or verl, naming neither bnpo nor the fix.
    """
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
    """The reward function's per-sample scores of ``batch`` (a KVBatchMeta), key -> (bs,) object array.

    The agent loop stores a rule-based reward function's dict under ``extra_fields["reward_extra_info"]``;
    a colocated reward model writes its extra keys as top-level fields instead
    (``PPOTrainer._compute_reward_colocate``), so components missing from the first are read from the second.
    """
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = list(data["extra_fields"]) if "extra_fields" in data.keys() else [None] * len(batch.keys)
    infos = [row.get("reward_extra_info", {}) if isinstance(row, dict) else {} for row in rows]
    fields = {key: _object_array([info.get(key) for info in infos]) for key in sorted({k for i in infos for k in i})}
    for key in components:
        if key not in fields:
            top = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[key])
            if key in top.keys():
                fields[key] = _object_array(list(top[key]))
    return fields


def final_rows(keys: list[str]) -> Optional[np.ndarray]:
    """(bs,) row of each sample's session's final output, from verl's keys ``{uid}_{session_id}_{index}``.

    None when every session has a single output (the common case) or the keys are not in verl's format
    (a custom agent-loop manager): then every sample counts on its own.
    """
    if not keys:
        return None
    parts = np.char.rpartition(np.asarray(keys, dtype=str), "_")
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
    sorted_code = code[order]
    last = np.append(sorted_code[1:] != sorted_code[:-1], True)
    final_of_session = np.empty(sorted_code[-1] + 1, dtype=np.int64)
    final_of_session[sorted_code[last]] = order[last]
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
    """Wrap ``PPOTrainer._compute_advantage`` of verl's ``trainer_base`` module, its checkpointing
    (``bnpo.verl.checkpoint``) and its ``__init__`` (the per-run check, before verl's TaskRunner calls ``init`` and
    ``fit``: every mode's ``__init__`` calls it); every place is checked before anything is patched."""
    compat.require_all(trainer_base)
    checkpoint.install(trainer_base.PPOTrainer)
    compat.patch(trainer_base.PPOTrainer, "_compute_advantage", extend)
    contract.check_at_construction(trainer_base.PPOTrainer, lambda trainer: "v1")
