"""Small batch builders shared by the estimator tests."""

from __future__ import annotations

import numpy as np
import torch


def outcome_batch(rewards, uids, length: int = 5, seed: int = 0, dtype=torch.float32):
    """verl-style tensors for outcome rewards: the reward sits on the last response token.

    Returns token_level_rewards (bs, L), response_mask (bs, L) with varied response lengths,
    and index (bs,) as a numpy object array of uids.
    """
    rng = np.random.default_rng(seed)
    bs = len(rewards)
    lengths = rng.integers(1, length + 1, size=bs)
    mask = torch.from_numpy((np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)).to(dtype)
    token_rewards = torch.zeros(bs, length, dtype=torch.float64)
    token_rewards[torch.arange(bs), torch.from_numpy(lengths - 1)] = torch.tensor(rewards, dtype=torch.float64)
    return token_rewards.to(dtype), mask, np.array(uids, dtype=object)


def grouped(rates_per_question, group_size: int, seed: int = 0):
    """Binary rewards: question q gets ``round(rate * group_size)`` successes; uids 'q0', 'q1', ..."""
    rewards, uids = [], []
    for q, rate in enumerate(rates_per_question):
        k = int(round(rate * group_size))
        rewards += [1.0] * k + [0.0] * (group_size - k)
        uids += [f"q{q}"] * group_size
    perm = np.random.default_rng(seed).permutation(len(rewards))
    return [rewards[i] for i in perm], [uids[i] for i in perm]


def scalar(advantages, mask):
    """The outcome scalar of each row (advantages are constant over the masked response), float64."""
    return (advantages * mask).sum(-1).double() / mask.sum(-1).clamp(min=1).double()
