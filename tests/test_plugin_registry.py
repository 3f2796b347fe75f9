"""The estimators as verl calls them: through its registry, with its config objects."""

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from omegaconf import OmegaConf
from oracle import reference_ad_bnpo, reference_advantages

import bnpo.verl.plugin  # noqa: F401  (registration; verl's entry point does the same)
from bnpo.verl import estimator_scope
from verl.trainer.ppo.core_algos import get_adv_estimator_fn


@pytest.mark.parametrize("config", [None, {}, OmegaConf.create({"adv_estimator": "bnpo", "bnpo": {}})])
def test_bnpo_through_registry(config):
    rewards, uids = grouped([0.125, 0.5, 0.75, 0.25], group_size=8)
    trl, mask, index = outcome_batch(rewards, uids)
    with estimator_scope() as scope:
        adv, ret = get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, index=index, config=config)
    expected, fit = reference_advantages(rewards, uids)
    got = scalar(adv, mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert torch.equal(adv, ret) and adv.shape == trl.shape
    stats = scope.take_stats()
    assert stats.alpha == pytest.approx(fit["alpha"]) and scope.take_stats() is None


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
    with estimator_scope() as scope:
        adv, ret = get_adv_estimator_fn("ad_bnpo")(
            token_level_rewards=trl, response_mask=mask, index=index, config=config, non_tensor_batch=ntb
        )
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    got = scalar(adv, mask)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    metrics = scope.stats.to_metrics()
    assert set(scope.stats.components) == {"acc", "format"} and "bnpo/acc/alpha" in metrics
    # each component has its own fit; an average of the two would describe no distribution
    assert not {"bnpo/mu", "bnpo/a", "bnpo/b", "bnpo/alpha", "bnpo/beta"} & set(metrics)
    assert metrics["bnpo/num_questions"] == 3


def test_two_scopes_in_one_process_see_only_their_own_statistics():
    rewards, uids = grouped([0.125, 0.5, 0.75, 0.25], group_size=8)
    other, other_uids = grouped([0.5, 0.875], group_size=4)
    estimator = get_adv_estimator_fn("bnpo")
    with estimator_scope() as first:
        with estimator_scope() as second:  # e.g. a second trainer's step in the same process
            trl, mask, index = outcome_batch(other, other_uids)
            estimator(token_level_rewards=trl, response_mask=mask, index=index, config=None)
        trl, mask, index = outcome_batch(rewards, uids)
        estimator(token_level_rewards=trl, response_mask=mask, index=index, config=None)
    assert first.stats.num_questions == 4 and second.stats.num_questions == 2


def test_missing_index_is_a_clear_error():
    trl, mask, _ = outcome_batch([1.0, 0.0], ["a", "a"])
    with pytest.raises(ValueError, match="uid"):
        get_adv_estimator_fn("bnpo")(token_level_rewards=trl, response_mask=mask, config=None)
