"""Every bad configuration and bad input raises a ValueError that names the key or row."""

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch
from omegaconf import OmegaConf

from bnpo import BNPOConfig, compute_ad_bnpo_advantage, compute_bnpo_advantage, config_from_algorithm, parse_bnpo_block
from bnpo.core.scores import component_rewards


def test_defaults_when_block_is_missing():
    assert config_from_algorithm(None) == BNPOConfig()
    assert config_from_algorithm(OmegaConf.create({"adv_estimator": "bnpo"})) == BNPOConfig()
    assert config_from_algorithm({"bnpo": None}) == BNPOConfig()


def test_hydra_block_is_parsed():
    algo = OmegaConf.create(
        {"bnpo": {"reward_min": -1, "reward_max": "2", "fixed_alpha": 1.5, "fixed_beta": 1.5, "max_weight": 1e4,
                  "components": ["acc", "format"], "component_weights": [2, 1]}}
    )
    cfg = config_from_algorithm(algo)
    assert cfg == BNPOConfig(-1.0, 2.0, 1.5, 1.5, 1e4, ("acc", "format"), (2.0, 1.0))


@pytest.mark.parametrize(
    "block, needles",
    [
        ({"reward_max": 0.0}, ["algorithm.bnpo.reward_max=0.0", "algorithm.bnpo.reward_min=0.0", "greater"]),
        ({"reward_min": 2, "reward_max": 1}, ["algorithm.bnpo.reward_max=1.0", "greater"]),
        ({"fixed_alpha": 1.0}, ["algorithm.bnpo.fixed_alpha=1.0", "algorithm.bnpo.fixed_beta=None", "both"]),
        ({"fixed_beta": 2.0}, ["algorithm.bnpo.fixed_beta=2.0", "neither"]),
        ({"fixed_alpha": 0.0, "fixed_beta": 1.0}, ["algorithm.bnpo.fixed_alpha=0.0", "(0, 1e+06]"]),
        ({"fixed_alpha": 1.0, "fixed_beta": -2.0}, ["algorithm.bnpo.fixed_beta=-2.0", "(0, 1e+06]"]),
        ({"fixed_alpha": 1e300, "fixed_beta": 1e300}, ["algorithm.bnpo.fixed_alpha=1e+300", "precision"]),
        ({"max_weight": 0}, ["algorithm.bnpo.max_weight=0.0", "(0, 1e+30]"]),
        ({"max_weight": 1e308}, ["algorithm.bnpo.max_weight=1e+308", "float32"]),
        # booleans are not numbers here (YAML's `true` would silently become 1.0)
        ({"fixed_alpha": True, "fixed_beta": 1.0}, ["algorithm.bnpo.fixed_alpha=True", "boolean"]),
        ({"max_weight": True}, ["algorithm.bnpo.max_weight=True", "boolean"]),
        ({"components": ["acc", "format"], "component_weights": [True, False]},
         ["algorithm.bnpo.component_weights=True", "boolean"]),
        # overflowing values
        ({"reward_min": -1e308, "reward_max": 1e308}, ["algorithm.bnpo.reward_min=-1e+308", "1e+30"]),
        ({"components": ["acc", "format"], "component_weights": [1e308, 1e308]},
         ["algorithm.bnpo.component_weights=[1e+308, 1e+308]", "at most 1e+30"]),
        # lists given as something else
        ({"components": "acc,format"}, ["algorithm.bnpo.components='acc,format'", "is a string", "'[acc,format]'"]),
        ({"components": {"acc": 1, "format": 2}}, ["algorithm.bnpo.components=", "must be a list"]),
        ({"components": ["acc"], "component_weights": "1"}, ["algorithm.bnpo.component_weights='1'", "is a string"]),
        ({"max_weight": float("inf")}, ["algorithm.bnpo.max_weight", "finite"]),
        ({"reward_max": "lots"}, ["algorithm.bnpo.reward_max='lots'", "not a number"]),
        ({"reward_maxx": 2}, ["algorithm.bnpo.reward_maxx", "allowed keys", "algorithm.bnpo.reward_max"]),
        ({"components": []}, ["algorithm.bnpo.components=[]", "empty"]),
        ({"components": ["acc", "acc"]}, ["algorithm.bnpo.components", "duplicates"]),
        ({"components": ["acc", 3]}, ["algorithm.bnpo.components", "non-empty string"]),
        ({"component_weights": [1.0]}, ["algorithm.bnpo.component_weights", "algorithm.bnpo.components"]),
        ({"components": ["acc", "format"], "component_weights": [1.0]}, ["2", "one weight per component"]),
        ({"components": ["acc", "format"], "component_weights": [1.0, -1.0]}, ["non-negative"]),
        ({"components": ["acc", "format"], "component_weights": [0.0, 0.0]}, ["positive sum"]),
        ({"baseline": "median"}, ["algorithm.bnpo.baseline='median' must be one of ['group_mean', 'eb_loo']"]),
        ({"baseline": 1}, ["algorithm.bnpo.baseline=1 must be one of"]),
        # the options bnpo 0.3 retired say so
        ({"fit_halflife": 10}, ["unknown key(s) ['algorithm.bnpo.fit_halflife']", "retired in bnpo 0.3", "remove it"]),
        ({"baseline": "posterior_mean"}, ["posterior_mean was retired in bnpo 0.3", "remove it"]),
    ],
)
def test_bad_config_names_key_value_and_fix(block, needles):
    with pytest.raises(ValueError) as err:
        parse_bnpo_block(block)
    for needle in needles:
        assert needle in str(err.value)


def test_block_must_be_a_mapping():
    with pytest.raises(ValueError, match="algorithm.bnpo must be a mapping"):
        config_from_algorithm({"bnpo": 3})
    with pytest.raises(ValueError, match="algorithm.bnpo must be a mapping"):
        config_from_algorithm({"bnpo": "reward_max=2"})


@pytest.mark.parametrize("config", ["bnpo", 3, 2.5, b"x", ["bnpo"]])
def test_config_of_the_wrong_type_is_refused_not_read_as_defaults(config):
    with pytest.raises(ValueError, match=r"config must be verl's algorithm config .* got " + type(config).__name__):
        config_from_algorithm(config)


def test_components_under_plain_bnpo_are_refused():
    trl, mask, index = outcome_batch([0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"algorithm.bnpo.components=\['acc'\] is set, but only ad_bnpo reads it"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig(components=("acc",)))


def test_non_finite_reward_names_count_and_row():
    rewards, uids = grouped([0.25, 0.5], group_size=4)
    rewards[5] = float("nan")
    trl, mask, index = outcome_batch(rewards, uids)
    with pytest.raises(ValueError, match=r"1 of 8 samples have a non-finite reward \(first: row 5"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())


def test_reward_outside_range_names_keys_range_and_count():
    trl, mask, index = outcome_batch([0.0, 2.0, 1.0, 3.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError) as err:
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    message = str(err.value)
    for needle in ("2 of 4 samples", "algorithm.bnpo.reward_min=0.0", "algorithm.bnpo.reward_max=1.0",
                   "observed range [0.0, 3.0]", "first: row 1"):
        assert needle in message
    adv, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig(reward_max=3.0))
    assert torch.isfinite(adv).all()


def test_shape_errors():
    trl, mask, index = outcome_batch([0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"index \(the uid of each sample\) has shape \(3,\); expected \(4,\)"):
        compute_bnpo_advantage(trl, mask, index[:3], BNPOConfig())
    with pytest.raises(ValueError, match="response_mask"):
        compute_bnpo_advantage(trl, mask[:, :2], index, BNPOConfig())
    with pytest.raises(ValueError, match="use one type for all uids"):
        compute_bnpo_advantage(trl, mask, np.array(["a", 1, "b", 2.5], dtype=object), BNPOConfig())


def test_ad_bnpo_without_components_says_what_to_configure():
    with pytest.raises(ValueError, match=r"ad_bnpo needs algorithm.bnpo.components"):
        component_rewards({"acc": [1.0]}, BNPOConfig(), 1, torch.device("cpu"))


def test_ad_bnpo_missing_component_lists_available_keys():
    cfg = BNPOConfig(components=("acc", "format"))
    batch = {"uid": np.array(["a"]), "acc": np.array([1.0]), "score": np.array([1.0])}
    with pytest.raises(ValueError) as err:
        component_rewards(batch, cfg, 1, torch.device("cpu"))
    assert "'format'" in str(err.value) and "['acc', 'score', 'uid']" in str(err.value)


def test_ad_bnpo_bad_component_values():
    cfg = BNPOConfig(components=("acc",))
    with pytest.raises(ValueError, match="'acc' has non-numeric values"):
        component_rewards({"acc": np.array([None, "x"], dtype=object)}, cfg, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'acc' has shape \(1,\) for 2 samples"):
        component_rewards({"acc": np.array([1.0])}, cfg, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'acc' has shape \(2, 2\) for 4 samples; it must be one number per sample"):
        component_rewards({"acc": np.array([[1.0, 0.0], [0.0, 1.0]])}, cfg, 4, torch.device("cpu"))
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="'acc' reward outside the declared range"):
        compute_ad_bnpo_advantage({"acc": torch.tensor([1.0, 5.0])}, mask, np.array(["a", "a"]), cfg)
