"""bnpo in verl's v1 trainer and in Ray processes: one local Ray instance, a real TransferQueue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch
from oracle import reference_ad_bnpo, reference_advantages
from verl_helpers import verl_config

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from omegaconf import OmegaConf  # noqa: E402

from bnpo.verl_trainer import BNPOTrainerSync  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

pytestmark = pytest.mark.slow  # starting Ray and TransferQueue takes ~30-60 s on a 2-core machine

BNPO_METRICS = ("mu", "var", "a", "b", "alpha", "beta", "num_questions", "num_degenerate", "weight_max", "clamped_frac")


@pytest.fixture(scope="module")
def transfer_queue():
    # TransferQueue's controller and storage unit are Ray actors: give them logical CPUs to be scheduled on.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"total_storage_size": 1000, "num_data_storage_units": 1}}}))
        yield tq
        tq.close()
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
def estimators_in_a_ray_worker():
    import verl  # noqa: F401  (the worker loads verl's plugins on import, as every verl worker does)
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    return {name: ADV_ESTIMATOR_REGISTRY[name].__module__ for name in ("bnpo", "ad_bnpo") if name in ADV_ESTIMATOR_REGISTRY}


def test_a_ray_task_sees_both_estimators(transfer_queue):
    assert ray.get(estimators_in_a_ray_worker.remote()) == {"bnpo": "bnpo.verl_plugin", "ad_bnpo": "bnpo.verl_plugin"}


def _put_rollouts(partition: str, rewards, uids, extra_infos):
    """Store samples the way verl's agent loop does (jagged responses, reward extra info in extra_fields)."""
    trl, mask, _ = outcome_batch(rewards, uids)
    rows, keys = [], []
    for i, uid in enumerate(uids):
        n = int(mask[i].sum())
        rows.append({
            "uid": uid,
            "rm_scores": trl[i, :n].clone(),
            "response_mask": mask[i, :n].long(),
            "old_log_probs": torch.zeros(n),
            "extra_fields": {"reward_extra_info": extra_infos[i]},
        })
        keys.append(f"{uid}_{i}_0")
    return tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(rows))


def _trainer(*overrides):
    trainer = BNPOTrainerSync.__new__(BNPOTrainerSync)  # only the advantage step runs: no workers, no model
    trainer.config = verl_config("trainer.v1.trainer_mode=bnpo_sync", *overrides)
    return trainer


def _advantages(batch):
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
    return torch.stack([row.sum() / row.numel() for row in data["advantages"].unbind(0)]).double()


def test_v1_advantage_step_bnpo(transfer_queue):
    rewards, uids = grouped([0.25, 0.5, 0.625, 0.875], group_size=8)
    rewards = [2 * r for r in rewards]
    batch = _put_rollouts("bnpo", rewards, uids, [{"score": r} for r in rewards])
    metrics = {}
    batch = _trainer("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2")._compute_advantage(batch, metrics)
    expected, fit = reference_advantages(rewards, uids, reward_max=2.0)
    torch.testing.assert_close(_advantages(batch), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert {f"bnpo/{name}" for name in BNPO_METRICS} <= set(metrics)
    assert metrics["bnpo/alpha"] == pytest.approx(fit["alpha"]) and metrics["bnpo/num_questions"] == 4


def test_v1_advantage_step_ad_bnpo(transfer_queue):
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    fmt = [float(x) for x in np.random.default_rng(2).integers(0, 2, size=len(acc))]
    infos = [{"score": a + f, "acc": a, "format": f} for a, f in zip(acc, fmt)]
    batch = _put_rollouts("ad_bnpo", [a + f for a, f in zip(acc, fmt)], uids, infos)
    metrics = {}
    trainer = _trainer("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")
    batch = trainer._compute_advantage(batch, metrics)
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    torch.testing.assert_close(_advantages(batch), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert {f"bnpo/{c}/{name}" for c in ("acc", "format") for name in BNPO_METRICS} <= set(metrics)
    assert trainer.trainer_mode == "sync"  # verl's own branches see the mode this trainer extends


def test_v1_missing_component_lists_the_available_keys(transfer_queue):
    acc, uids = grouped([0.25, 0.5], group_size=4)
    batch = _put_rollouts("missing", acc, uids, [{"score": a, "acc": a} for a in acc])
    trainer = _trainer("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")
    with pytest.raises(ValueError, match=r"'format'.*\['acc', 'score', 'uid'\]"):
        trainer._compute_advantage(batch, {})
