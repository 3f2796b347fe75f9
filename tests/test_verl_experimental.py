"""bnpo in verl's experimental trainers, through their own code: one_step_off_policy's advantage step (metrics,
ad_bnpo's components) and fully_async_policy's construction (bnpo's start-up check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batches import grouped, scalar
from oracle import reference_ad_bnpo, reference_advantages
from test_verl_checkpoint import checkpointing_trainer
from verl_helpers import legacy_batch, verl_config

from verl.experimental.fully_async_policy.fully_async_trainer import FullyAsyncTrainer
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer

AD_BNPO = ("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")


def one_step_advantage(trainer, batch, reward_extra_infos):
    """verl's SeparateRayPPOTrainer._fit_compute_advantage as fit_step calls it (the step's reward set before)."""
    trainer.metrics, trainer.timing_raw = {}, {}
    trainer.reward_tensor = batch.batch["token_level_scores"]
    trainer.reward_extra_infos_dict = reward_extra_infos
    return trainer._fit_compute_advantage(batch)


def test_one_step_off_policy_logs_bnpo_metrics(tmp_path):
    rewards, uids = grouped([0.25, 0.5, 0.625, 0.875], group_size=8)
    trainer = checkpointing_trainer(OneStepOffRayTrainer, tmp_path, "algorithm.adv_estimator=bnpo")
    data = one_step_advantage(trainer, legacy_batch(rewards, uids), {})
    expected, fit = reference_advantages(rewards, uids)
    got = scalar(data.batch["advantages"], data.batch["response_mask"])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert trainer.metrics["bnpo/alpha"] == pytest.approx(fit["alpha"]) and trainer.metrics["bnpo/num_questions"] == 4


def test_one_step_off_policy_hands_ad_bnpo_the_reward_components(tmp_path):
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    fmt = [float(x) for x in np.random.default_rng(3).integers(0, 2, size=len(acc))]
    trainer = checkpointing_trainer(OneStepOffRayTrainer, tmp_path, *AD_BNPO)
    batch = legacy_batch([a + f for a, f in zip(acc, fmt)], uids)
    # the reward loop's per-sample extra info, which verl puts into non_tensor_batch inside the step
    data = one_step_advantage(trainer, batch, {"acc": acc, "format": fmt, "score": [a + f for a, f in zip(acc, fmt)]})
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    got = scalar(data.batch["advantages"], data.batch["response_mask"])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert {"bnpo/acc/alpha", "bnpo/format/alpha"} <= set(trainer.metrics)


def test_one_step_off_policy_leaves_other_estimators_alone(tmp_path):
    rewards, uids = grouped([0.25, 0.5], group_size=8)
    trainer = checkpointing_trainer(OneStepOffRayTrainer, tmp_path, "algorithm.adv_estimator=grpo")
    one_step_advantage(trainer, legacy_batch(rewards, uids), {})
    assert not any(key.startswith("bnpo/") for key in trainer.metrics)


def _construct_fully_async(*overrides):
    cls = FullyAsyncTrainer.__ray_actor_class__  # the class behind verl's Ray actor
    return cls(verl_config(*overrides), tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)


def test_fully_async_runs_bnpos_startup_check_which_its_entry_point_skips():
    with pytest.raises(ValueError, match=r"algorithm\.bnpo\.reward_mx"):
        _construct_fully_async("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_mx=2")
    # a valid bnpo config passes bnpo's check and reaches verl's own __init__, which asserts on the engine layout
    with pytest.raises(AssertionError):
        _construct_fully_async("algorithm.adv_estimator=bnpo", "actor_rollout_ref.hybrid_engine=True")
