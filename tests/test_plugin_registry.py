"""The estimators as verl calls them: through its registry, with its config objects."""

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from omegaconf import OmegaConf
from oracle import reference_ad_bnpo, reference_advantages

import bnpo.verl_plugin  # noqa: F401  (registration; verl's entry point does the same)
from bnpo import pop_last_stats
from verl.trainer.ppo.core_algos import get_adv_estimator_fn


@pytest.mark.parametrize("config", [None, {}, OmegaConf.create({"adv_estimator": "bnpo", "bnpo": {}})])
def test_bnpo_through_registry(config):
    rewards, uids = grouped([0.125, 0.5, 0.75, 0.25], group_size=8)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, ret = get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, index=index, config=config)
    expected, fit = reference_advantages(rewards, uids)
    got = scalar(adv, mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert torch.equal(adv, ret) and adv.shape == trl.shape
    stats = pop_last_stats()
    assert stats.alpha == pytest.approx(fit["alpha"]) and pop_last_stats() is None


def test_bnpo_reads_its_block():
    rewards, uids = grouped([0.125, 0.5, 0.75, 0.25], group_size=8)
    trl, mask, index = outcome_batch([2 * r for r in rewards], uids)
    config = OmegaConf.create({"bnpo": {"reward_max": 2.0}})
    adv, _ = get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, index=index, config=config)
    expected, _ = reference_advantages([2 * r for r in rewards], uids, reward_max=2.0)
    got = scalar(adv, mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_ad_bnpo_through_registry_with_non_tensor_batch():
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    fmt = list(np.random.default_rng(0).integers(0, 2, size=len(acc)).astype(float))
    trl, mask, index = outcome_batch(acc, uids)
    ntb = {"uid": index, "acc": np.array(acc, dtype=object), "format": np.array(fmt)}
    config = OmegaConf.create({"bnpo": {"components": ["acc", "format"]}})
    adv, ret = get_adv_estimator_fn("ad_bnpo")(
        token_level_rewards=trl, response_mask=mask, index=index, config=config, non_tensor_batch=ntb
    )
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    got = scalar(adv, mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert set(pop_last_stats().components) == {"acc", "format"}


def test_missing_index_is_a_clear_error():
    trl, mask, _ = outcome_batch([1.0, 0.0], ["a", "a"])
    with pytest.raises(ValueError, match="uid"):
        get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, config=None)
