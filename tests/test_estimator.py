"""BNPO against the spec's oracle, closed forms, degenerate batches and dtype/device handling."""

import math

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from oracle import reference_ad_bnpo, reference_advantages

from bnpo import BNPOConfig, compute_ad_bnpo_advantage, compute_bnpo_advantage


def check_against_oracle(rewards, uids, cfg=BNPOConfig(), **oracle_kwargs):
    trl, mask, index = outcome_batch(rewards, uids)
    adv, ret, stats = compute_bnpo_advantage(trl, mask, index, cfg)
    expected, fit = reference_advantages(rewards, uids, **oracle_kwargs)
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(scalar(adv, mask).double(), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(adv, ret)
    return stats, fit


def test_binary_batch_matches_reference():
    rewards, uids = grouped([0.125, 0.25, 0.5, 0.5, 0.75, 0.9375, 0.0, 1.0], group_size=16)
    stats, fit = check_against_oracle(rewards, uids)
    for name in ("mu", "var", "a", "b", "alpha", "beta"):
        assert getattr(stats, name) == pytest.approx(fit[name], rel=1e-9)
    assert stats.alpha > 1 and stats.beta > 1  # a regime where the normaliser is not the identity


def test_alpha_beta_follow_theorem_1():
    # p_hat = 0.25, 0.5, 0.75: mu = 0.5, var = 1/16, nu = 3, a = b = 1.5 -> alpha = beta = 1.5
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    _, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert (stats.a, stats.b) == pytest.approx((1.5, 1.5))
    assert (stats.alpha, stats.beta) == pytest.approx((1.5, 1.5))


def test_continuous_rewards_in_declared_range():
    rng = np.random.default_rng(3)
    uids = [f"u{i // 4}" for i in range(40)]
    rewards = list(rng.uniform(-1.0, 2.0, size=40))
    cfg = BNPOConfig(reward_min=-1.0, reward_max=2.0)
    check_against_oracle(rewards, uids, cfg, reward_min=-1.0, reward_max=2.0)


def test_token_level_rewards_are_summed():
    trl = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.05, 0.0, 0.05]])
    mask = torch.ones_like(trl)
    index = np.array(["a", "a", "b", "b"], dtype=object)
    adv, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    expected, _ = reference_advantages([1.0, 0.0, 0.25, 0.1], list(index))
    torch.testing.assert_close(adv[:, 0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_reinforce_closed_form_and_verl_grpo_without_std():
    from verl.trainer.ppo.core_algos import compute_grpo_vectorized_outcome_advantage

    rewards, uids = grouped([0.2, 0.4, 0.6, 0.8, 0.0], group_size=5, seed=1)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig(fixed_alpha=1, fixed_beta=1))
    p_hat = {u: np.mean([r for r, v in zip(rewards, uids) if v == u]) for u in set(uids)}
    expected = torch.tensor([r - p_hat[u] for r, u in zip(rewards, uids)])
    torch.testing.assert_close(scalar(adv, mask).double(), expected.double(), rtol=1e-6, atol=1e-7)
    verl_adv, _ = compute_grpo_vectorized_outcome_advantage(trl, mask, index, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv, verl_adv, rtol=1e-5, atol=1e-6)
    assert (stats.alpha, stats.beta) == (1.0, 1.0)


def test_grpo_closed_form_is_pi_over_8():
    rewards, uids = grouped([0.25, 0.5, 0.75, 0.125], group_size=8, seed=2)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig(fixed_alpha=1.5, fixed_beta=1.5))
    p_hat = {u: np.mean([r for r, v in zip(rewards, uids) if v == u]) for u in set(uids)}
    expected = [math.pi / 8 * (r - p_hat[u]) / math.sqrt(p_hat[u] * (1 - p_hat[u])) for r, u in zip(rewards, uids)]
    torch.testing.assert_close(scalar(adv, mask).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_advantage_is_zero_outside_mask_and_constant_inside():
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids, length=7)
    adv, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert torch.all(adv[mask == 0] == 0)
    row_scalar = scalar(adv, mask)
    assert torch.allclose(adv, row_scalar[:, None].to(adv.dtype) * mask)


# ---- degenerate batches (docs/estimator.md): defined, finite, documented ----


def test_singleton_groups_get_zero_and_stay_out_of_the_fit():
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    rewards_all = rewards + [1.0, 0.0]
    uids_all = uids + ["lonely1", "lonely2"]
    trl, mask, index = outcome_batch(rewards_all, uids_all)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert torch.all(adv[-2:] == 0)
    assert stats.num_singleton == 2 and stats.num_fit == 3 and stats.num_questions == 5
    expected, fit = reference_advantages(rewards, uids)  # the fit ignores the singletons
    torch.testing.assert_close(scalar(adv, mask)[:-2].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert stats.alpha == pytest.approx(fit["alpha"])


def test_all_singletons_give_zero_advantage_not_1e6():
    trl, mask, index = outcome_batch([1.0, 0.0, 1.0], ["a", "b", "c"])
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert torch.all(adv == 0)
    assert stats.fallback == "fewer_than_2_questions" and stats.weight_max == 0.0


def test_zero_variance_falls_back_to_reinforce():
    rewards, uids = grouped([0.5, 0.5, 0.5], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert stats.fallback == "zero_variance" and (stats.alpha, stats.beta) == (1.0, 1.0)
    expected = torch.tensor([r - 0.5 for r in rewards], dtype=torch.float64)
    torch.testing.assert_close(scalar(adv, mask).double(), expected)


def test_single_question_matches_reference():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0]
    trl, mask, index = outcome_batch(rewards, ["only"] * 5)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    expected, _ = reference_advantages(rewards, ["only"] * 5)  # reference: mu = 0, var = 1 -> (1, 1)
    torch.testing.assert_close(scalar(adv, mask).double(), torch.tensor(expected, dtype=torch.float64))
    assert stats.fallback == "fewer_than_2_questions" and (stats.alpha, stats.beta) == (1.0, 1.0)


def test_all_solved_and_all_failed_questions_are_exactly_zero():
    rewards, uids = grouped([0.0, 1.0, 0.5, 0.25], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    silent = torch.tensor([u in ("q0", "q1") for u in uids])
    assert torch.all(adv[silent] == 0) and torch.all(torch.isfinite(adv))
    assert stats.num_degenerate == 2
    assert stats.weight_max < 1e6  # the clamped boundary weights carry no signal and are not reported


def test_negative_nu_clamps_to_alpha_beta_one():
    # two questions, p_hat = 0 and 1: unbiased var 0.5 > mu (1 - mu) = 0.25 -> nu < 0
    rewards, uids = grouped([0.0, 1.0], group_size=2)
    trl, mask, index = outcome_batch(rewards, uids)
    _, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert stats.a < 0 and stats.b < 0 and (stats.alpha, stats.beta) == (1.0, 1.0)


def test_clamp_is_reported():
    # a non-binary reward near the boundary under a steep fixed normaliser hits max_weight
    trl, mask, index = outcome_batch([0.0, 0.002, 0.5, 0.7], ["a", "a", "b", "b"])
    _, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig(fixed_alpha=3, fixed_beta=3, max_weight=50.0))
    assert stats.weight_max == 50.0 and stats.clamped_frac == pytest.approx(0.5)


def test_empty_batch():
    trl = torch.zeros(0, 4)
    adv, ret, stats = compute_bnpo_advantage(trl, torch.zeros(0, 4), np.array([], dtype=object), BNPOConfig())
    assert adv.shape == (0, 4) and stats.num_questions == 0 and stats.fallback == "empty_batch"


# ---- dtype and device ----


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
     (torch.float16, torch.float32), (torch.int64, torch.float32), (torch.int32, torch.float32),
     (torch.bool, torch.float32)],
)
def test_advantages_are_float32_or_float64(dtype, expected):
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids, dtype=torch.float64)
    adv, _, _ = compute_bnpo_advantage(trl.to(dtype), mask.bool(), index, BNPOConfig())
    assert adv.dtype == expected and adv.device == trl.device
    reference, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    torch.testing.assert_close(adv.double(), reference, rtol=1e-6, atol=1e-7)  # binary rewards are exact in any dtype
    assert adv.abs().max() > 0.1  # not truncated to an integer 0


def test_float16_rewards_do_not_overflow():
    # 1 of 32 correct among 39 questions about half solved: weight ~ 2e5, beyond float16's 65504
    rewards, uids = grouped([1 / 32] + [15 / 32, 16 / 32, 17 / 32] * 13, group_size=32)
    trl, mask, index = outcome_batch(rewards, uids, dtype=torch.float16)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert stats.weight_max > torch.finfo(torch.float16).max
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    expected, _ = reference_advantages(rewards, uids)
    torch.testing.assert_close(scalar(adv, mask).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_tensor_index_is_accepted():
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    as_int = torch.tensor([int(u[1:]) * 7 for u in uids])
    a1, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    a2, _, _ = compute_bnpo_advantage(trl, mask, as_int, BNPOConfig())
    torch.testing.assert_close(a1, a2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_keeps_device():
    rewards, uids = grouped([0.125, 0.25, 0.5, 0.75, 1.0, 0.0], group_size=16)
    trl, mask, index = outcome_batch(rewards, uids)
    cpu, _, cpu_stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    gpu, _, gpu_stats = compute_bnpo_advantage(trl.cuda(), mask.cuda(), index, BNPOConfig())
    assert gpu.is_cuda and gpu.dtype == trl.dtype
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    assert gpu_stats.alpha == pytest.approx(cpu_stats.alpha)
    comps = {"acc": torch.tensor(rewards).cuda(), "format": torch.ones(len(rewards)).cuda()}
    ad, _, _ = compute_ad_bnpo_advantage(comps, mask.cuda(), index, BNPOConfig(components=("acc", "format")))
    assert ad.is_cuda and torch.isfinite(ad).all()


# ---- AD-BNPO ----


def test_ad_bnpo_matches_oracle_equal_and_weighted():
    acc, uids = grouped([0.25, 0.5, 0.75, 0.125], group_size=8, seed=4)
    fmt = list(np.random.default_rng(5).integers(0, 2, size=len(acc)).astype(float))
    _, mask, index = outcome_batch(acc, uids)
    comps = {"acc": torch.tensor(acc), "format": torch.tensor(fmt)}
    for weights in (None, (3.0, 1.0)):
        cfg = BNPOConfig(components=("acc", "format"), component_weights=weights)
        adv, ret, stats = compute_ad_bnpo_advantage(comps, mask, index, cfg)
        expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids, list(weights) if weights else None)
        torch.testing.assert_close(scalar(adv, mask).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
        assert set(stats.components) == {"acc", "format"}
        assert "bnpo/acc/alpha" in stats.to_metrics() and "bnpo/format/beta" in stats.to_metrics()


def test_ad_bnpo_single_component_equals_bnpo():
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=8)
    trl, mask, index = outcome_batch(acc, uids)
    a1, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    a2, _, _ = compute_ad_bnpo_advantage({"acc": torch.tensor(acc)}, mask, index, BNPOConfig(components=("acc",)))
    torch.testing.assert_close(a1, a2)


def test_metrics_have_the_documented_names():
    rewards, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    _, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    metrics = stats.to_metrics()
    for name in ("mu", "var", "a", "b", "alpha", "beta", "num_questions", "num_degenerate", "weight_max", "clamped_frac"):
        assert math.isfinite(metrics[f"bnpo/{name}"])
