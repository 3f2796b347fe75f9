"""The opt-in steadier fits: ``fit_halflife`` (moments pooled across steps) and ``baseline: posterior_mean``."""

import json
import math

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import beta_pdf, reference_advantages

from bnpo import BNPOConfig, FitState, compute_ad_bnpo_advantage, compute_bnpo_advantage, config_from_algorithm


@pytest.fixture
def state():
    return FitState()  # one run's pooled fits


def run(rates, cfg, state=None, group_size=4, seed=0):
    rewards, uids = grouped(rates, group_size=group_size, seed=seed)
    trl, mask, index = outcome_batch(rewards, uids, seed=seed)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, cfg, fit_state=state)
    return rewards, uids, scalar(adv, mask), stats


# ---- fit_halflife ----


def test_first_step_is_the_papers_fit_then_moments_pool(state):
    cfg = BNPOConfig(fit_halflife=1.0)  # one step back weighs 0.5
    rewards, uids, adv, stats = run([0.25, 0.75], cfg, state)
    expected, fit = reference_advantages(rewards, uids)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert (stats.mu, stats.var, stats.fit_weight) == pytest.approx((0.5, 0.125, 2.0))
    # by hand: weight 0.5 * 2 + 3 = 4, sums 0.5 * 1 + 2 = 2.5 and 0.5 * 0.625 + 1.5 = 1.8125
    _, _, _, stats = run([0.5, 0.5, 1.0], cfg, state)
    mu, var = 2.5 / 4, (1.8125 - 2.5 ** 2 / 4) / 3
    nu = mu * (1 - mu) / var - 1
    assert (stats.mu, stats.var, stats.fit_weight) == pytest.approx((mu, var, 4.0))
    assert (stats.a, stats.b) == pytest.approx((mu * nu, (1 - mu) * nu))
    assert (stats.alpha, stats.beta) == pytest.approx((1 + mu * nu / 3, 1 + (1 - mu) * nu / 3))


def test_pooled_advantages_use_the_pooled_normaliser(state):
    cfg = BNPOConfig(fit_halflife=2.0)
    run([0.125, 0.875, 0.5], cfg, state, group_size=8)
    rewards, uids, adv, stats = run([0.25, 0.5, 0.75, 0.625], cfg, state, group_size=8)
    p_hat = {u: np.mean([r for r, v in zip(rewards, uids) if v == u]) for u in set(uids)}
    expected = [(r - p_hat[u]) / beta_pdf(p_hat[u], stats.alpha, stats.beta) for r, u in zip(rewards, uids)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    _, single = reference_advantages(rewards, uids)
    assert abs(single["alpha"] - stats.alpha) > 1e-3  # the pool moved the normaliser away from this batch's own


def test_a_long_halflife_is_the_fit_of_all_batches_together(state):
    cfg = BNPOConfig(fit_halflife=1e6)
    batches = [[0.25, 0.5], [0.75, 1.0, 0.5], [0.0, 0.125, 0.375]]
    for rates in batches:
        _, _, _, stats = run(rates, cfg, state, group_size=8)
    everything = torch.tensor([r for rates in batches for r in rates], dtype=torch.float64)
    assert stats.mu == pytest.approx(float(everything.mean()), rel=1e-5)
    assert stats.var == pytest.approx(float(everything.var()), rel=1e-5)


def test_pool_state_is_per_estimator_and_survives_a_save_and_load(state):
    cfg = BNPOConfig(fit_halflife=3.0, components=("acc", "format"))
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    fmt = [1.0] * 6 + [0.0] * 6
    _, mask, index = outcome_batch(acc, uids)
    comps = {"acc": torch.tensor(acc), "format": torch.tensor(fmt)}
    compute_ad_bnpo_advantage(comps, mask, index, cfg, fit_state=state)
    saved = json.loads(json.dumps(state.state_dict()))
    assert set(saved) == {"ad_bnpo/acc", "ad_bnpo/format"} and saved["ad_bnpo/acc"]["batches"] == 1
    adv_uninterrupted, _, stats_uninterrupted = compute_ad_bnpo_advantage(comps, mask, index, cfg, fit_state=state)
    resumed = FitState()
    resumed.load_state_dict(saved)  # a resumed run
    adv_resumed, _, stats_resumed = compute_ad_bnpo_advantage(comps, mask, index, cfg, fit_state=resumed)
    assert torch.equal(adv_resumed, adv_uninterrupted)
    assert stats_resumed.components["acc"].alpha == stats_uninterrupted.components["acc"].alpha
    _, _, stats_fresh = compute_ad_bnpo_advantage(comps, mask, index, cfg, fit_state=FitState())
    assert stats_fresh.components["acc"].fit_weight < stats_resumed.components["acc"].fit_weight
    with pytest.raises(ValueError, match="bnpo fit state 'bnpo' has invalid numbers"):
        resumed.load_state_dict({"bnpo": {"halflife": 2.0, "weight": float("nan"), "sum1": 0, "sum2": 0, "batches": 1}})


def test_two_runs_in_one_process_keep_their_own_pools():
    cfg = BNPOConfig(fit_halflife=2.0)
    first, second = FitState(), FitState()
    run([0.125, 0.875, 0.5], cfg, first, group_size=8)
    _, _, _, stats_second = run([0.25, 0.5, 0.75, 0.625], cfg, second, group_size=8)
    _, _, _, alone = run([0.25, 0.5, 0.75, 0.625], cfg, FitState(), group_size=8)
    assert stats_second == alone  # the other run's batch did not enter this run's pool
    assert first.state_dict()["bnpo"]["batches"] == 1 and second.state_dict()["bnpo"]["batches"] == 1


def test_fit_halflife_without_a_run_state_says_what_to_pass():
    with pytest.raises(ValueError, match=r"algorithm\.bnpo\.fit_halflife=2\.0 .* fit_state=bnpo\.FitState\(\)"):
        run([0.25, 0.75], BNPOConfig(fit_halflife=2.0))


def test_zero_variance_in_the_pool_falls_back(state):
    cfg = BNPOConfig(fit_halflife=4.0)
    for _ in range(3):
        _, _, adv, stats = run([1 / 3, 1 / 3, 1 / 3], cfg, state, group_size=3)
    assert stats.fallback == "zero_variance" and (stats.alpha, stats.beta) == (1.0, 1.0)
    assert torch.isfinite(adv).all()


# ---- baseline: posterior_mean ----


def test_posterior_mean_baseline_by_hand():
    """The prior: the fit's mean and the deconvolved variance Var p = S^2 - E, not the variance of p_hat."""
    cfg = BNPOConfig(baseline="posterior_mean")
    rates = [1.0, 0.0, 0.25, 0.5, 0.75]  # an all-solved and an all-failed question
    rewards, uids, adv, stats = run(rates, cfg, group_size=4)
    p = np.array(rates)
    mu, var = p.mean(), p.var(ddof=1)  # 0.5, 0.15625
    nu = mu * (1 - mu) / var - 1
    a, b = mu * nu, (1 - mu) * nu
    alpha, beta = max(1, 1 + a / 3), max(1, 1 + b / 3)  # the normaliser still comes from the fit of p_hat
    noise = np.mean([4 * r * (1 - r) / 3 / 4 for r in rates])  # E = mean of v_q / m, v_q = m p(1 - p) / (m - 1)
    n0 = mu * (1 - mu) / (var - noise) - 1  # 1.1818..., where the fit of p_hat says a + b = nu = 0.6
    assert n0 == pytest.approx(13 / 11) and stats.eb_tau2 == pytest.approx(var - noise)
    expected = []
    for r, u in zip(rewards, uids):
        post = (mu * n0 + 4 * rates[int(u[1:])]) / (n0 + 4)
        expected.append((r - post) / beta_pdf(post, alpha, beta))
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    solved = torch.tensor([u == "q0" for u in uids])
    assert (adv[solved] > 0).all() and (adv[~solved].abs() > 0).all()  # every question carries a signal
    assert stats.weight_max < 1e3  # evaluated inside (0, 1): no clamp
    assert stats.eb_lambda == pytest.approx(n0 / (n0 + 4))
    assert "bnpo/eb_lambda" in stats.to_metrics()


def test_posterior_mean_without_a_deconvolved_spread_is_the_batch_mean():
    # two samples per question: S^2 = 1/16, while E = mean of v_q / 2 = (3 * 0.25 + 0) / 4 = 3/16, so the
    # binomial noise explains the whole spread: n0 = inf, every baseline is the batch mean 3/8
    rates = [0.5, 0.5, 0.5, 0.0]
    rewards, uids, adv, stats = run(rates, BNPOConfig(baseline="posterior_mean", fixed_alpha=1, fixed_beta=1),
                                    group_size=2)
    p = np.array(rates)
    noise = np.mean([2 * r * (1 - r) / 2 for r in rates])
    assert p.var(ddof=1) <= noise and stats.eb_tau2 == 0.0 and stats.eb_lambda == 1.0
    expected = torch.tensor([r - p.mean() for r in rewards], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)


def test_posterior_mean_with_a_fallback_prior_is_the_group_mean():
    cfg = BNPOConfig(baseline="posterior_mean")
    _, _, adv_post, stats = run([0.5, 0.5, 0.5], cfg)  # zero variance: prior (0, 0)
    _, _, adv_mean, _ = run([0.5, 0.5, 0.5], BNPOConfig())
    assert stats.fallback == "zero_variance"
    torch.testing.assert_close(adv_post, adv_mean)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=8),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([None, 1.0, 8.0]),
    st.sampled_from([None, (1.0, 1.0), (3.0, 2.0)]),
)
def test_posterior_mean_is_finite_on_every_degenerate_batch(rates, group_size, halflife, fixed):
    kwargs = {} if fixed is None else {"fixed_alpha": fixed[0], "fixed_beta": fixed[1]}
    cfg = BNPOConfig(baseline="posterior_mean", fit_halflife=halflife, **kwargs)
    rewards, uids = grouped(rates, group_size=group_size)
    trl, mask, index = outcome_batch(rewards, uids)
    state = FitState()
    for _ in range(2):  # the second call sees a pooled fit
        adv, _, stats = compute_bnpo_advantage(trl, mask, index, cfg, fit_state=state)
        assert torch.isfinite(adv).all() and torch.all(adv[mask == 0] == 0)
        assert all(math.isfinite(v) for v in stats.to_metrics().values())
        assert stats.weight_max <= cfg.max_weight
        if fixed is None and stats.fallback is None:
            assert stats.clamped_frac == 0.0  # with the paper's alpha, beta the weight is never clamped


def test_new_keys_through_the_config():
    cfg = config_from_algorithm({"bnpo": {"fit_halflife": 8, "baseline": "posterior_mean"}})
    assert (cfg.fit_halflife, cfg.baseline) == (8.0, "posterior_mean")
    for block, needle in [({"fit_halflife": 0}, "algorithm.bnpo.fit_halflife=0.0 must be in (0, 1e+06]"),
                          ({"fit_halflife": True}, "algorithm.bnpo.fit_halflife=True is a boolean"),
                          ({"baseline": "median"}, "algorithm.bnpo.baseline='median' must be one of"),
                          ({"baseline": 1}, "algorithm.bnpo.baseline=1 must be one of")]:
        with pytest.raises(ValueError) as err:
            config_from_algorithm({"bnpo": block})
        assert needle in str(err.value)
