"""A trainer's pooled fit (``fit_halflife``) through verl's real checkpointing, and trainers that share a process.

The trainers are verl's own classes with their real ``_save_checkpoint`` / ``_load_checkpoint`` and, for the
separated trainer (one_step_off_policy), its real ``_fit_compute_advantage``; only workers and the data loader
are stubbed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch
from batches import grouped
from verl_helpers import legacy_batch, verl_config

import verl.trainer.ppo.ray_trainer as ray_trainer
from bnpo.verl import estimator_scope, fit_state_of
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer
from verl.trainer.ppo.v1 import PPOTrainerSync

POOLED = ("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.fit_halflife=4")
# verl 0.9.1's v1 trainer calls checkpoint_callback.on_save with the saved folder; 0.9.0 and main have no such callback
VERL_HAS_CHECKPOINT_CALLBACK = importlib.util.find_spec("verl.trainer.ppo.checkpoint_callback") is not None
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
    """verl's trainer ``cls`` with its real checkpoint methods; ``seen`` records, at the moments verl saves the actor
    and calls ``checkpoint_callback.on_save`` (where the installed verl has one), whether bnpo's state file is already
    in the step's folder."""
    trainer = cls.__new__(cls)
    trainer.config = verl_config(f"trainer.default_local_dir={checkpoint_dir}", "actor_rollout_ref.rollout.n=8",
                                 *overrides)
    trainer.trainer_mode = "sync"
    trainer.use_critic = False
    seen = seen if seen is not None else []

    def state_there(moment):
        folder = os.path.join(str(checkpoint_dir), f"global_step_{trainer.global_steps}")
        seen.append((moment, os.path.exists(os.path.join(folder, "bnpo_state.json"))))

    trainer.actor_rollout_wg = SimpleNamespace(save_checkpoint=lambda *a, **k: state_there("actor saved"),
                                               load_checkpoint=lambda *a, **k: None)
    trainer.checkpoint_callback = SimpleNamespace(on_save=lambda **kwargs: state_there("on_save"))
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
    with estimator_scope(fit_state_of(trainer)) as scope:
        data = ray_trainer.compute_advantage(legacy_batch(*grouped(rates, group_size=8)), adv_estimator="bnpo",
                                             config=algorithm)
    return data.batch["advantages"].clone(), scope.take_stats().to_metrics()


@pytest.mark.parametrize("cls", [OneStepOffRayTrainer, PPOTrainerSync], ids=["one_step_off_and_legacy", "v1"])
def test_pooled_fit_is_saved_with_verls_checkpoint_and_restored_on_resume(tmp_path, cls):
    step = separated_step if cls is OneStepOffRayTrainer else v1_step
    first = checkpointing_trainer(cls, tmp_path, *POOLED)
    first._load_checkpoint()  # a fresh start: nothing to resume
    step(first, BATCHES[0])
    first.global_steps = 1
    first._save_checkpoint()
    saved = json.loads((tmp_path / "global_step_1" / "bnpo_state.json").read_text())
    assert saved["bnpo"]["batches"] == 1 and saved["bnpo"]["halflife"] == 4.0
    uninterrupted, metrics = step(first, BATCHES[1])

    resumed = checkpointing_trainer(cls, tmp_path, *POOLED)
    resumed._load_checkpoint()
    assert resumed.global_steps == 1
    again, metrics_again = step(resumed, BATCHES[1])
    assert torch.equal(again, uninterrupted) and metrics_again["bnpo/fit_weight"] == metrics["bnpo/fit_weight"]

    fresh = checkpointing_trainer(cls, tmp_path, *POOLED, "trainer.resume_mode=disable")
    fresh._load_checkpoint()
    assert step(fresh, BATCHES[1])[1]["bnpo/fit_weight"] == 3.0  # three questions: its own batch only


@pytest.mark.parametrize("cls", [OneStepOffRayTrainer, PPOTrainerSync], ids=["one_step_off_and_legacy", "v1"])
def test_the_state_is_on_disk_before_verl_marks_the_checkpoint_and_goes_where_verl_copies_it(tmp_path, cls):
    step = separated_step if cls is OneStepOffRayTrainer else v1_step
    seen = []
    remote = tmp_path / "remote"
    trainer = checkpointing_trainer(cls, tmp_path / "local", *POOLED, f"trainer.default_hdfs_dir={remote}", seen=seen)
    step(trainer, BATCHES[0])
    trainer.global_steps = 1
    trainer._save_checkpoint()
    # verl saves the actor first, then writes latest_checkpointed_iteration.txt; verl 0.9.1's v1 trainer then calls
    # checkpoint_callback.on_save (0.9.0 and main have no checkpoint callback, the legacy trainer calls none)
    assert seen and all(present for _, present in seen), seen
    on_save = VERL_HAS_CHECKPOINT_CALLBACK and cls is PPOTrainerSync
    assert [moment for moment, _ in seen] == (["actor saved", "on_save"] if on_save else ["actor saved"])
    assert (tmp_path / "local" / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert json.loads((remote / "global_step_1" / "bnpo_state.json").read_text())["bnpo"]["batches"] == 1


def test_two_trainers_in_one_process_keep_their_own_statistics_and_pools(tmp_path):
    def trainer(name):
        return checkpointing_trainer(OneStepOffRayTrainer, tmp_path / name, *POOLED)

    a, b = trainer("a"), trainer("b")
    alone = trainer("alone")
    _, a_first = separated_step(a, BATCHES[0])
    _, b_first = separated_step(b, BATCHES[1])  # interleaved: b's batch must not enter a's pool
    adv_a, a_second = separated_step(a, BATCHES[2])
    separated_step(alone, BATCHES[0])
    adv_alone, alone_second = separated_step(alone, BATCHES[2])
    assert torch.equal(adv_a, adv_alone) and a_second == alone_second
    assert b_first["bnpo/fit_weight"] == 3.0 and a_first["bnpo/mu"] != b_first["bnpo/mu"]
    for t, name in ((a, "a"), (b, "b")):
        t.global_steps = 1
        t._save_checkpoint()
    batches = {name: json.loads((tmp_path / name / "global_step_1" / "bnpo_state.json").read_text())["bnpo"]["batches"]
               for name in ("a", "b")}
    assert batches == {"a": 2, "b": 1}  # each saved its own pool


def test_a_checkpoint_without_bnpo_state_resumes_with_an_empty_pool_and_says_so(tmp_path, caplog):
    trainer = checkpointing_trainer(OneStepOffRayTrainer, tmp_path, "algorithm.adv_estimator=bnpo")
    trainer.global_steps = 1
    trainer._save_checkpoint()  # no fit_halflife: nothing to save
    assert not (tmp_path / "global_step_1" / "bnpo_state.json").exists()
    resumed = checkpointing_trainer(OneStepOffRayTrainer, tmp_path, *POOLED)
    resumed._load_checkpoint()
    assert resumed.global_steps == 1 and "starts from an empty pool" in caplog.text
    assert separated_step(resumed, BATCHES[0])[1]["bnpo/fit_weight"] == 3.0
