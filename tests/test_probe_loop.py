"""The gradient-noise probe's torch loop (``bnpo_probe.loop``): its task, reward and estimator set-ups."""

from __future__ import annotations

import torch

from bnpo_probe.loop import ESTIMATORS, Settings, estimate_advantages, rollout
from bnpo_probe.task import EOS, PAD, SEP, ReverseTask, build_policy


# ------------------------------------------------------------------------------------------- the task


def test_reward_is_exact_match_of_the_reversed_digits():
    task = ReverseTask(min_digits=1, max_digits=4)
    prompts = torch.tensor([[PAD, 1, 2, 3, SEP], [4, 5, 6, 7, SEP], [PAD, PAD, PAD, 9, SEP]])
    right = torch.tensor([[3, 2, 1, EOS, 5], [7, 6, 5, 4, EOS], [9, EOS, 0, 0, 0]])  # tokens after EOS don't count
    assert task.reward(prompts, right).tolist() == [1.0, 1.0, 1.0]
    wrong = torch.tensor([[3, 2, 2, EOS, 5], [7, 6, 5, 4, 4], [9, 9, EOS, 0, 0]])  # a digit, no EOS, too long
    assert task.reward(prompts, wrong).tolist() == [0.0, 0.0, 0.0]
    early_eos = torch.tensor([[3, 2, EOS, EOS, 0]])
    assert task.reward(prompts[:1], early_eos).tolist() == [0.0]


def test_sampled_prompts_are_well_formed_and_reproducible():
    task = ReverseTask(min_digits=2, max_digits=5)
    prompts = task.sample_prompts(200, torch.Generator().manual_seed(0))
    assert prompts.shape == (200, task.max_digits + 1)
    assert (prompts[:, -1] == SEP).all()
    body = prompts[:, :-1]
    lengths = (body != PAD).sum(1)
    assert lengths.min() >= 2 and lengths.max() <= 5 and len(set(lengths.tolist())) == 4
    # padding only on the left: once a digit appears, no PAD follows
    assert ((body != PAD).long().cummax(1).values == (body != PAD).long()).all()
    assert torch.equal(prompts, task.sample_prompts(200, torch.Generator().manual_seed(0)))
    target, counted = task.targets(prompts)
    assert task.reward(prompts, target).eq(1).all()
    assert torch.equal(counted.sum(1), lengths + 1)  # the digits and the EOS


def test_reinforce_setups_agree_and_bnpo_differs_on_a_real_rollout():
    """'reinforce' (bnpo at fixed (1, 1)) and verl's grpo without std give the same advantages."""
    s = Settings(prompts_per_step=8, rollout_n=8)
    torch.manual_seed(0)
    model = build_policy(s.hidden_size, s.num_layers, s.num_heads, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = rollout(s, model, s.task.sample_prompts(8, generator), generator)
    rewards = batch.batch["token_level_rewards"].sum(1)
    rewards_by_question = rewards.view(8, 8)
    # force a mixed batch so the estimators have something to disagree about
    rewards_by_question[:4] = (torch.arange(8) < torch.arange(1, 5).unsqueeze(1)).float()
    batch.batch["token_level_rewards"].zero_()
    last = batch.batch["response_mask"].sum(1) - 1
    batch.batch["token_level_rewards"][torch.arange(64), last] = rewards_by_question.flatten()

    def advantages(name: str) -> torch.Tensor:  # verl's compute_advantage with the estimator's algorithm block
        scored, _ = estimate_advantages(ESTIMATORS[name], batch)
        assert "advantages" not in batch.batch  # on a copy
        return scored.batch["advantages"]

    reinforce, no_std = advantages("reinforce"), advantages("grpo_no_std")
    torch.testing.assert_close(reinforce, no_std, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(advantages("bnpo"), reinforce)
    assert not torch.allclose(advantages("grpo"), reinforce)
