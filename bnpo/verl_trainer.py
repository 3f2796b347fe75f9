"""verl v1 trainers for bnpo / ad_bnpo, selected with ``trainer.v1.trainer_mode=bnpo_sync``
(or ``bnpo_colocate_async`` / ``bnpo_separate_async``).

They are verl's trainers with one step extended: before the advantage, the reward function's
per-sample scores (kept in TransferQueue, which verl's ``_compute_advantage`` does not fetch) are
published to ``ad_bnpo``; after it, the BNPO statistics are added to the step's metrics, which verl
logs through its tracker. Registered when a process imports ``verl.trainer.ppo.v1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import transfer_queue as tq
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, register_trainer

from .stats import pop_last_stats
from .verl_batch import providing
from .verl_config import ESTIMATORS, TRAINER_MODES, check_run_config


def _object_array(values: list) -> np.ndarray:
    """(bs,) object array of per-sample values (np.array would stack list-valued entries into 2-D)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def reward_fields(batch: Any) -> dict[str, np.ndarray]:
    """Every reward-extra-info key of the batch -> (bs,) object array, in ``batch.keys`` order.

    The agent loop stores a rule-based reward function's dict under ``extra_fields["reward_extra_info"]``;
    a colocated reward model writes its extra keys as top-level fields instead (see ``read_top_level``).
    """
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = list(data["extra_fields"]) if "extra_fields" in data.keys() else [None] * len(batch.keys)
    infos = [row.get("reward_extra_info", {}) if isinstance(row, dict) else {} for row in rows]
    keys = sorted({key for info in infos for key in info})
    return {key: _object_array([info.get(key) for info in infos]) for key in keys}


def read_top_level(batch: Any, keys: list[str]) -> dict[str, np.ndarray]:
    """Fields written by a colocated reward model (absent keys are skipped)."""
    out = {}
    for key in keys:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[key])
        if key in data.keys():
            out[key] = _object_array(list(data[key]))
    return out


class BNPOTrainerMixin:
    """Adds the reward components and BNPO metrics to a verl v1 trainer's advantage step."""

    base_mode = "sync"

    @property
    def trainer_mode(self) -> str:
        return self.base_mode

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        # verl stores the configured name (bnpo_sync, ...) but branches on its own names ("sync", ...),
        # and reads trainer.v1.<mode> settings under them: it must see the mode this trainer extends.
        pass

    def __init__(self, config) -> None:
        check_run_config(config)  # before any worker starts
        super().__init__(config)

    def _compute_advantage(self, batch, metrics: dict):
        algorithm = self.config.algorithm
        if algorithm.adv_estimator not in ESTIMATORS:
            return super()._compute_advantage(batch, metrics)
        fields = {}
        if algorithm.adv_estimator == "ad_bnpo":
            fields = reward_fields(batch)
            components = list(algorithm.get("bnpo", {}).get("components", None) or [])
            fields.update(read_top_level(batch, [key for key in components if key not in fields]))
        pop_last_stats()  # never log a previous step's numbers
        with providing(fields):
            batch = super()._compute_advantage(batch, metrics)
        stats = pop_last_stats()
        if stats is not None:
            metrics.update(stats.to_metrics())
        return batch


_BASES = {"sync": PPOTrainerSync, "colocate_async": PPOTrainerColocateAsync, "separate_async": PPOTrainerSeparateAsync}

BNPO_TRAINERS = {
    name: register_trainer(name)(
        type(f"BNPOTrainer_{base}", (BNPOTrainerMixin, _BASES[base]), {"base_mode": base, "__module__": __name__})
    )
    for name, base in TRAINER_MODES.items()
}
BNPOTrainerSync = BNPO_TRAINERS["bnpo_sync"]
