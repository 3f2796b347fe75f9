"""``algorithm.bnpo.baseline: eb_loo``: the empirical-Bayes leave-one-out baseline, checked against numbers worked
out by hand and against a plain-Python transcription of its definition (one sample at a time)."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
import torch
from batches import outcome_batch, scalar
from oracle import beta_pdf

from bnpo import BNPOConfig, compute_ad_bnpo_advantage, compute_bnpo_advantage, config_from_algorithm

REINFORCE_EB = {"baseline": "eb_loo", "fixed_alpha": 1.0, "fixed_beta": 1.0}  # weight 1: the baseline alone


def eb_loo_oracle(rewards: list[float], uids: list, alpha: float = 1.0, beta: float = 1.0) -> list[float]:
    """The definition, sample by sample: mu, S^2 over every question; v_q, sigma2, E over those with m_q >= 2;
    tau2 = max(0, S^2 - E); lambda_q; the leave-one-out baseline; times min(1 / f_N(p_hat_q), 1e6), evaluated at
    lambda_q mu + (1 - lambda_q) p_hat_q where f_N(p_hat_q) = 0."""
    groups: dict = {}
    for r, u in zip(rewards, uids):
        groups.setdefault(u, []).append(r)
    p_hat = {u: sum(v) / len(v) for u, v in groups.items()}
    values = list(p_hat.values())
    mu = sum(values) / len(values)
    s2 = sum((p - mu) ** 2 for p in values) / (len(values) - 1) if len(values) > 1 else 0.0
    v = {u: sum((x - p_hat[u]) ** 2 for x in xs) / (len(xs) - 1) for u, xs in groups.items() if len(xs) >= 2}
    sigma2 = sum(v.values()) / len(v) if v else 0.0
    noise = sum(v[u] / len(groups[u]) for u in v) / len(v) if v else 0.0
    tau2 = max(0.0, s2 - noise)
    out = []
    for r, u in zip(rewards, uids):
        m = len(groups[u])
        lam = 1.0 if m == 1 or tau2 == 0 else sigma2 / (sigma2 + (m - 1) * tau2)
        baseline = mu if m == 1 else lam * mu + (1 - lam) * (m * p_hat[u] - r) / (m - 1)
        density = beta_pdf(p_hat[u], alpha, beta)
        if density == 0:
            density = beta_pdf(lam * mu + (1 - lam) * p_hat[u], alpha, beta)
        out.append(min(1 / density, 1e6) * (r - baseline))
    return out


def advantages(rewards, uids, **cfg):
    trl, mask, index = outcome_batch(rewards, uids, dtype=torch.float64)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig(**cfg))
    return scalar(adv, mask), stats


# A: 1 of 4 solved; B: 2 of 2 (all solved); C: 0 of 3 (all failed); D: a singleton, solved.
HAND_REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
HAND_UIDS = ["A"] * 4 + ["B"] * 2 + ["C"] * 3 + ["D"]


def test_unequal_groups_all_solved_all_failed_and_a_singleton_by_hand():
    # p_hat = 1/4, 1, 0, 1: mu = 9/16, S^2 = 51/192. v_A = (9/16 + 3/16) / 3 = 1/4, v_B = v_C = 0 (D has no v):
    # sigma2 = 1/12, E = (1/16) / 3 = 1/48, tau2 = 51/192 - 4/192 = 47/192. lambda = sigma2 / (sigma2 + (m-1) tau2):
    # A 16/157, B 16/63, C 8/55. A's solved sample: b = (16/157)(9/16) + (141/157)(0/3) = 9/157; its failed ones:
    # b = 9/157 + (141/157)(1/3) = 56/157. B: b = 9/63 + (47/63)(1) = 8/9. C: b = (8/55)(9/16) = 9/110. D: b = mu.
    expected = [F(148, 157)] + [F(-56, 157)] * 3 + [F(1, 9)] * 2 + [F(-9, 110)] * 3 + [F(7, 16)]
    adv, stats = advantages(HAND_REWARDS, HAND_UIDS, **REINFORCE_EB)
    torch.testing.assert_close(adv, torch.tensor([float(x) for x in expected], dtype=torch.float64))
    assert stats.eb_tau2 == pytest.approx(47 / 192)
    assert stats.eb_lambda == pytest.approx(float((F(16, 157) + F(16, 63) + F(8, 55)) / 3))  # over m_q >= 2
    assert (stats.num_singleton, stats.num_degenerate) == (1, 2)
    assert adv.tolist() == pytest.approx(eb_loo_oracle(HAND_REWARDS, HAND_UIDS))


def test_all_failed_groups_get_a_negative_signal_at_a_finite_weight():
    """With the paper's adaptive alpha > 1, f_N(0) = 0: the weight is taken at the credibility estimate."""
    rewards = HAND_REWARDS + [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    uids = HAND_UIDS + ["E"] * 4 + ["F"] * 4
    adv, stats = advantages(rewards, uids, baseline="eb_loo")
    assert stats.alpha > 1 and stats.beta > 1 and stats.fallback is None
    failed = torch.tensor([u == "C" for u in uids])
    assert (adv[failed] < 0).all() and torch.isfinite(adv).all()
    assert stats.weight_max < 1e3 and stats.clamped_frac == 0.0  # no max_weight anywhere
    assert adv.tolist() == pytest.approx(eb_loo_oracle(rewards, uids, stats.alpha, stats.beta), rel=1e-9)
    group_mean, _ = advantages(rewards, uids)
    assert (group_mean[failed] == 0).all()  # the paper's baseline gives them nothing


def test_no_spread_left_is_the_batch_mean_and_a_lone_question_too():
    # p_hat 1/2 and 1/2: S^2 = 0, tau2 = 0, lambda = 1: every baseline is mu
    adv, stats = advantages([1.0, 0.0, 0.0, 1.0], ["a", "a", "b", "b"], **REINFORCE_EB)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5] and stats.eb_lambda == 1.0 and stats.eb_tau2 == 0.0
    # one question: S^2 = 0 (|Q| < 2), so its baseline is its own mean
    adv, _ = advantages([1.0, 0.0, 0.0], ["a"] * 3, **REINFORCE_EB)
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    # singletons only: no v_q at all (sigma2 = E = 0), lambda = 1, b = mu
    adv, stats = advantages([1.0, 0.0, 1.0, 1.0], ["a", "b", "c", "d"], **REINFORCE_EB)
    assert adv.tolist() == pytest.approx([0.25, -0.75, 0.25, 0.25]) and stats.eb_lambda == 1.0


def test_all_solved_and_all_failed_batches_have_no_signal():
    for reward in (0.0, 1.0):
        adv, stats = advantages([reward] * 8, ["a"] * 4 + ["b"] * 4, baseline="eb_loo")
        assert torch.equal(adv, torch.zeros(8, dtype=torch.float64)) and stats.weight_max == 0.0


def test_matches_the_definition_on_random_batches():
    rng = np.random.default_rng(0)
    for trial in range(30):
        sizes = rng.integers(1, 7, size=rng.integers(2, 9))
        rates = rng.beta(1.5, 1.0, size=len(sizes))
        rewards, uids = [], []
        for q, (m, p) in enumerate(zip(sizes, rates)):
            rewards += [float(x) for x in rng.random(m) < p] if trial % 2 else list(rng.random(m).round(3))
            uids += [f"q{q}"] * int(m)
        fixed = {} if trial % 3 else {"fixed_alpha": 2.0, "fixed_beta": 1.5}
        adv, stats = advantages(rewards, uids, baseline="eb_loo", **fixed)
        expected = eb_loo_oracle(rewards, uids, stats.alpha, stats.beta)
        assert adv.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12), trial


def test_padding_rows_and_sample_order_do_not_change_it():
    trl, mask, index = outcome_batch(HAND_REWARDS, HAND_UIDS, dtype=torch.float64)
    cfg = BNPOConfig(baseline="eb_loo")
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, cfg)
    padded_trl = torch.cat([trl, torch.zeros(2, trl.shape[1], dtype=trl.dtype)])
    padded_mask = torch.cat([mask, torch.zeros(2, mask.shape[1], dtype=mask.dtype)])
    padded_index = np.concatenate([index, np.array(["pad", "pad"], dtype=object)])
    padded, _, padded_stats = compute_bnpo_advantage(padded_trl, padded_mask, padded_index, cfg)
    torch.testing.assert_close(padded[:-2], adv)
    assert torch.equal(padded[-2:], torch.zeros_like(padded[-2:])) and padded_stats.eb_lambda == stats.eb_lambda
    perm = torch.randperm(len(HAND_UIDS), generator=torch.Generator().manual_seed(1))
    shuffled, _, _ = compute_bnpo_advantage(trl[perm], mask[perm], index[perm.numpy()], cfg)
    torch.testing.assert_close(shuffled, adv[perm])


def test_through_the_config_and_ad_bnpo():
    cfg = config_from_algorithm({"bnpo": {"baseline": "eb_loo"}})
    assert cfg.baseline == "eb_loo"
    trl, mask, index = outcome_batch(HAND_REWARDS, HAND_UIDS, dtype=torch.float64)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, cfg)
    expected = eb_loo_oracle(HAND_REWARDS, HAND_UIDS, stats.alpha, stats.beta)
    assert scalar(adv, mask).tolist() == pytest.approx(expected, rel=1e-9)
    components = {"acc": torch.tensor(HAND_REWARDS), "format": torch.tensor([1.0] * 9 + [0.0])}
    ad_cfg = BNPOConfig(baseline="eb_loo", components=("acc", "format"))
    _, _, ad_stats = compute_ad_bnpo_advantage(components, mask, index, ad_cfg)
    metrics = ad_stats.to_metrics()
    assert "bnpo/acc/eb_lambda" in metrics and "bnpo/format/eb_tau2" in metrics and "bnpo/eb_lambda" not in metrics
    assert all(math.isfinite(value) for value in metrics.values())
    with pytest.raises(ValueError, match=r"algorithm\.bnpo\.baseline='eb' must be one of \['group_mean', 'eb_loo'\]"):
        config_from_algorithm({"bnpo": {"baseline": "eb"}})


def test_through_verl_with_its_metrics():
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from bnpo.verl import estimator_scope

    trl, mask, index = outcome_batch(HAND_REWARDS, HAND_UIDS)
    data = DataProto.from_dict(tensors={"token_level_rewards": trl, "response_mask": mask},
                               non_tensors={"uid": index})
    config = {"adv_estimator": "bnpo", "bnpo": {"baseline": "eb_loo"}}
    with estimator_scope() as scope:
        out = compute_advantage(data, "bnpo", config=config)
    expected = eb_loo_oracle(HAND_REWARDS, HAND_UIDS, scope.stats.alpha, scope.stats.beta)
    assert scalar(out.batch["advantages"], mask).tolist() == pytest.approx(expected, rel=1e-6)
    metrics = scope.stats.to_metrics()
    assert metrics["bnpo/eb_lambda"] == pytest.approx(float((F(16, 157) + F(16, 63) + F(8, 55)) / 3))
    assert metrics["bnpo/eb_tau2"] == pytest.approx(47 / 192) and metrics["bnpo/num_fit"] == 3
