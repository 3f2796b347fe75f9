"""The fixed normalisers that turn BNPO into other estimators (docs/baselines.md, "Presets"), each checked against
that estimator's own advantages up to a constant: verl's grpo for REINFORCE and GRPO, and MaxRL's
(r - mean) / mean written out here (verl has no MaxRL estimator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from bnpo import BNPOConfig, compute_bnpo_advantage

M = 8
RATES = [0.0, 0.125, 0.25, 0.5, 0.625, 0.875, 1.0, 0.375]  # all-failed and all-solved questions included


def batch(group_size: int = M, seed: int = 0):
    rewards, uids = grouped(RATES, group_size=group_size, seed=seed)
    return rewards, uids, *outcome_batch(rewards, uids, seed=seed)


def bnpo(alpha: float, beta: float, trl, mask, index) -> torch.Tensor:
    adv, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig(fixed_alpha=alpha, fixed_beta=beta))
    return adv


def verl_grpo(trl, mask, index, norm_by_std: bool) -> torch.Tensor:
    adv, _ = get_adv_estimator_fn("grpo")(
        token_level_rewards=trl, response_mask=mask, index=index, norm_adv_by_std_in_grpo=norm_by_std
    )
    return adv


def test_one_one_is_reinforce_with_the_group_mean_baseline():
    _, _, trl, mask, index = batch()
    torch.testing.assert_close(bnpo(1.0, 1.0, trl, mask, index), verl_grpo(trl, mask, index, False))


@pytest.mark.parametrize("group_size", [4, 8, 16])
def test_three_halves_is_grpo_times_a_constant(group_size):
    """f_N(p; 3/2, 3/2) = sqrt(p (1 - p)) / B(3/2, 3/2) with B = pi/8; verl's std is the unbiased one, so BNPO is
    GRPO times pi/8 sqrt(m / (m - 1)) (up to GRPO's epsilon of 1e-6 on the std)."""
    _, _, trl, mask, index = batch(group_size)
    ours, theirs = bnpo(1.5, 1.5, trl, mask, index), verl_grpo(trl, mask, index, True)
    constant = math.pi / 8 * math.sqrt(group_size / (group_size - 1))
    torch.testing.assert_close(ours, constant * theirs, rtol=1e-5, atol=1e-7)
    assert theirs.abs().max() > 0.5  # a real comparison: GRPO's advantages are of order 1


def maxrl(rewards: list[float], uids: list) -> list[float]:
    """MaxRL's advantage (r - mean) / mean per question; a question without any reward has none (0)."""
    means = {u: np.mean([r for r, v in zip(rewards, uids) if v == u]) for u in set(uids)}
    return [(r - means[u]) / means[u] if means[u] > 0 else 0.0 for r, u in zip(rewards, uids)]


def test_two_one_is_maxrl_times_one_half():
    """f_N(p; 2, 1) = 2p, so (s - p) / f_N(p) = (s - p) / (2 p): MaxRL's (r - mean) / mean, halved."""
    rewards, uids, trl, mask, index = batch()
    ours = bnpo(2.0, 1.0, trl, mask, index)
    expected = 0.5 * torch.tensor(maxrl(rewards, uids), dtype=torch.float32).unsqueeze(1) * mask
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
    assert expected.abs().max() > 1.0  # the 1/8-solved question's solved sample: (1 - 1/8) / (1/8) / 2 = 3.5


def test_the_presets_differ_from_each_other():
    _, _, trl, mask, index = batch()
    one, grpo, max_rl = (bnpo(a, b, trl, mask, index) for a, b in ((1.0, 1.0), (1.5, 1.5), (2.0, 1.0)))
    for x, y in ((one, grpo), (one, max_rl), (grpo, max_rl)):
        signal = y != 0  # the samples of mixed questions
        ratio = x[signal] / y[signal]
        assert ratio.max() - ratio.min() > 0.1  # not one constant apart
