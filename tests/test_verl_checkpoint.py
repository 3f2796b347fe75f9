"""A bnpo run through verl's real checkpointing, and trainers that share a process.

The trainers are verl's own classes with their real ``_save_checkpoint`` / ``_load_checkpoint`` and, for the
separated trainer (one_step_off_policy), its real ``_fit_compute_advantage``; only workers and the data loader
are stubbed.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from batches import grouped
from verl_helpers import legacy_batch, verl_config

import verl.trainer.ppo.ray_trainer as ray_trainer
from bnpo.verl import estimator_scope
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer
from verl.trainer.ppo.v1 import PPOTrainerSync

BNPO = "algorithm.adv_estimator=bnpo"
BATCHES = ([0.25, 0.5, 0.875], [0.125, 0.5, 0.625], [0.375, 0.75, 1.0])


class _Loader:
    """A data loader with nothing to save (verl checkpoints its state and reads its length)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __len__(self):
        return 1


def checkpointing_trainer(cls, checkpoint_dir, *overrides, seen=None):
    """verl's trainer ``cls`` with its real checkpoint methods; ``seen`` records the moments verl saves the actor and
    calls ``checkpoint_callback.on_save`` (where the installed verl has one)."""
    trainer = cls.__new__(cls)
    trainer.config = verl_config(f"trainer.default_local_dir={checkpoint_dir}", "actor_rollout_ref.rollout.n=8",
                                 *overrides)
    trainer.trainer_mode = "sync"
    trainer.use_critic = False
    seen = seen if seen is not None else []

    trainer.actor_rollout_wg = SimpleNamespace(save_checkpoint=lambda *a, **k: seen.append("actor saved"),
                                               load_checkpoint=lambda *a, **k: None)
    trainer.checkpoint_callback = SimpleNamespace(on_save=lambda **kwargs: seen.append("on_save"))
    trainer.train_dataloader = _Loader()
    return trainer


def separated_step(trainer, rates):
    """One advantage step of verl's separated trainer (its own ``_fit_compute_advantage``): advantages, metrics."""
    batch = legacy_batch(*grouped(rates, group_size=8))
    trainer.metrics, trainer.timing_raw = {}, {}
    trainer.reward_tensor, trainer.reward_extra_infos_dict = batch.batch["token_level_scores"], {}
    data = trainer._fit_compute_advantage(batch)
    return data.batch["advantages"].clone(), trainer.metrics


def v1_step(trainer, rates):
    """The advantage step as bnpo's v1 extension runs it (inside the trainer's scope); test_verl_ray runs the
    real one, which needs Ray and TransferQueue."""
    algorithm = trainer.config.algorithm
    with estimator_scope() as scope:
        data = ray_trainer.compute_advantage(legacy_batch(*grouped(rates, group_size=8)), adv_estimator="bnpo",
                                             config=algorithm)
    return data.batch["advantages"].clone(), scope.take_stats().to_metrics()


@pytest.mark.parametrize("cls", [OneStepOffRayTrainer, PPOTrainerSync], ids=["one_step_off_and_legacy", "v1"])
def test_a_bnpo_run_saves_and_resumes_with_verls_own_checkpoint_and_nothing_of_bnpos(tmp_path, cls):
    """bnpo keeps no state across steps (0.3 retired the pooled fit): verl's checkpoint is the whole run, and the
    resumed run's advantage step is the uninterrupted one's."""
    step = separated_step if cls is OneStepOffRayTrainer else v1_step
    seen = []
    first = checkpointing_trainer(cls, tmp_path, BNPO, seen=seen)
    first._load_checkpoint()  # a fresh start: nothing to resume
    step(first, BATCHES[0])
    first.global_steps = 1
    first._save_checkpoint()
    assert seen and (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert sorted(os.listdir(tmp_path / "global_step_1")) == ["data.pt"]  # verl's own files only (workers stubbed)
    uninterrupted, metrics = step(first, BATCHES[1])

    resumed = checkpointing_trainer(cls, tmp_path, BNPO)
    resumed._load_checkpoint()
    assert resumed.global_steps == 1
    again, metrics_again = step(resumed, BATCHES[1])
    assert torch.equal(again, uninterrupted) and metrics_again == metrics


def test_two_trainers_in_one_process_keep_their_own_statistics(tmp_path):
    def trainer(name):
        return checkpointing_trainer(OneStepOffRayTrainer, tmp_path / name, BNPO)

    a, b, alone = trainer("a"), trainer("b"), trainer("alone")
    _, a_first = separated_step(a, BATCHES[0])
    _, b_first = separated_step(b, BATCHES[1])  # interleaved: b's step must not reach a's metrics
    adv_a, a_second = separated_step(a, BATCHES[2])
    separated_step(alone, BATCHES[0])
    adv_alone, alone_second = separated_step(alone, BATCHES[2])
    assert torch.equal(adv_a, adv_alone) and a_second == alone_second
    assert b_first["bnpo/num_fit"] == 3.0 and a_first["bnpo/mu"] != b_first["bnpo/mu"]
