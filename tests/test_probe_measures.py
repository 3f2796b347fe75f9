"""The probe's measures and theory (``bnpo_probe.measures``, ``bnpo_probe.theory``, the summary of
``bnpo_probe.report``) against known answers: hand-made gradients, simulated ones with a known mean and
noise, and simulated success rates with a known distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnpo_probe.measures import GradientSums, kappa_by_level, per_batch_noise, trace_covariance, unbiased_cosine
from bnpo_probe.report import summarize_estimator
from bnpo_probe import theory


def k_batch_ratio(g: torch.Tensor) -> float:
    """What bnpo 0.1 reported: mean_k ||g_k - g_bar||^2 / ||g_bar||^2 of K gradients (K, P), biased toward 1."""
    g = g.double()
    return ((g - g.mean(0)).pow(2).sum(1).mean() / g.mean(0).pow(2).sum()).item()


def naive_cosines(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """cos(g_k, r) of single gradients (K,): shrunk by each g_k's noise."""
    return torch.nn.functional.cosine_similarity(g.double(), r.double().unsqueeze(0), dim=1)

# ------------------------------------------------------------------------------------------ noise


def test_identical_gradients_have_no_noise_and_cosine_one():
    g = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).repeat(6, 1)
    assert per_batch_noise(g) == 0.0
    assert unbiased_cosine(GradientSums.of(g), GradientSums.of(2 * g)) == pytest.approx(1.0)


def test_hand_made_gradients():
    # g = (±1, 1): mean (0, 1), every ||g_k - mean||^2 = 1
    g = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    sums = GradientSums.of(g)
    # ||sum g||^2 = 4 = sum ||g||^2: no cross term, so ||E g||^2 is estimated as 0; tr Cov = (4 - 4/2) / 1 = 2
    assert (sums.signal(), trace_covariance(g)) == (0.0, 2.0)
    assert per_batch_noise(g) == math.inf  # the mean is not resolved
    # four gradients around (0, 2): deviations (±1, 0), (0, ±1); spread 1, signal 4
    g = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [0.0, 3.0], [0.0, 1.0]])
    assert per_batch_noise(g) == pytest.approx((4 / 3) / (4 - (4 / 3) / 4))
    assert GradientSums.of(g).signal() == pytest.approx(4 - (4 / 3) / 4) and trace_covariance(g) == pytest.approx(4 / 3)


def test_sums_added_one_by_one_are_the_sums_of_the_stack():
    g = torch.randn(7, 30, generator=torch.Generator().manual_seed(0))
    one_by_one = GradientSums()
    for row in g:
        one_by_one.add(row)
    stacked = GradientSums.of(g)
    assert one_by_one.count == 7 and torch.allclose(one_by_one.total, stacked.total)
    assert one_by_one.signal() == pytest.approx(stacked.signal())
    assert one_by_one.squared_norms == pytest.approx(stacked.squared_norms)


def test_per_batch_noise_is_unbiased_and_the_old_ratio_is_not():
    generator = torch.Generator().manual_seed(0)
    mean = torch.full((50,), 5 / math.sqrt(50))  # ||E g||^2 = 25; tr Cov = 50: true noise ratio 2
    g = mean + torch.randn(4000, 50, generator=generator, dtype=torch.float64)
    for scale in (1e-3, 7.0):
        assert per_batch_noise(scale * g) == pytest.approx(per_batch_noise(g), rel=1e-9)
    assert per_batch_noise(g) == pytest.approx(2.0, rel=0.05)
    # with K = 8: the K-batch ratio is pulled to (K - 1) R / (K + R), the per-batch one is not (mean of ratios:
    # loose bound, the ratio of two estimates is not exactly unbiased)
    small = [g[i : i + 8] for i in range(0, 4000, 8)]
    assert np.mean([k_batch_ratio(x) for x in small]) == pytest.approx(7 / 8 * 2 / (1 + 2 / 8), rel=0.05)
    assert np.median([per_batch_noise(x) for x in small]) == pytest.approx(2.0, rel=0.15)


def test_unbiased_cosine_does_not_move_with_the_noise():
    """Two means at a known angle (cos 0.6); the naive cosine of single gradients falls with their noise, the
    unbiased cosine of the means does not."""
    generator = torch.Generator().manual_seed(1)
    dim = 400
    u, v = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    u[0], v[0], v[1] = 1.0, 0.6, 0.8
    reference = GradientSums.of(u + 0.05 * torch.randn(256, dim, generator=generator, dtype=torch.float64))
    for noise in (0.05, 0.15):  # per-batch noise ratios 1 and 9
        found, naive = [], []
        for _ in range(20):
            g = 3.0 * v + 3.0 * noise * torch.randn(48, dim, generator=generator, dtype=torch.float64)
            found.append(unbiased_cosine(GradientSums.of(g), reference))
            naive.append(naive_cosines(g, reference.mean).mean().item())
        assert np.mean(found) == pytest.approx(0.6, abs=0.02), noise
        if noise == 0.15:
            assert np.mean(naive) < 0.25  # shrunk by (1 + R)^-1/2 = 1/sqrt(10)


# ------------------------------------------------------------------------------------------ the summary


def _point(seed: int, per_batch: dict[str, float], cosine: dict[str, float]) -> dict:
    keys = ("per_batch_noise", "unbiased_cosine", "grad_norm", "variance", "signal")
    estimators = {}
    for name in per_batch:
        estimators[name] = dict.fromkeys(keys, 1.0)
        estimators[name].update(per_batch_noise=per_batch[name], unbiased_cosine=cosine[name])
    return {"seed": seed, "estimators": estimators}


def test_tables_pair_the_unbiased_noise_per_seed():
    points = [
        _point(0, {"reinforce": 4.0, "x": 3.6}, {"reinforce": 1.02, "x": 0.97}),
        _point(1, {"reinforce": 10.0, "x": 10.0}, {"reinforce": 0.98, "x": 0.95}),
    ]
    entry = summarize_estimator(points, "x")
    assert entry["noise_ratio_per_seed"] == pytest.approx([0.9, 1.0])  # paired: each seed's own ratio
    assert entry["noise_ratio"] == pytest.approx(0.95) and entry["lower_noise_points"] == 1
    assert entry["cosine_gain_per_seed"] == pytest.approx([-0.05, -0.03])


def test_kappa_is_a_mean_per_level_shown_from_a_minimum_count():
    p_hat = np.array([4, 4, 4, 2, 2, 2, 2, 7]) / 8
    kappa = np.array([1.0, 1.0, 10.0, 2.0, 2.0, 2.0, 2.0, 50.0])
    k = kappa_by_level(p_hat, kappa, 8, min_count=3)
    assert k["count"] == [0, 4, 0, 3, 0, 0, 1]
    assert k["mean"][3] == pytest.approx(4.0)  # the mean (the median would say 1)
    assert k["overall"] == pytest.approx(70 / 8)
    assert k["relative"][1] == pytest.approx(2.0 / (70 / 8)) and k["relative"][3] == pytest.approx(4.0 / (70 / 8))
    assert math.isnan(k["relative"][6]) and math.isnan(k["mean"][0])  # one question: no estimate


# ------------------------------------------------------------------------------------------ theory


def test_theorem_variance_is_minimised_at_one_plus_a_third():
    for a, b in ((0.3, 0.2), (3.0, 2.5), (1.0, 6.0)):
        alpha, beta = theory.theorem_normaliser(1.0, a, b)
        best = theory.theorem_variance(alpha, beta, a, b)
        for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05), (0.1, -0.1)):
            if alpha + da >= 1 and beta + db >= 1:
                assert theory.theorem_variance(alpha + da, beta + db, a, b) > best
        assert theory.theorem_variance(1.0, 1.0, a, b) == pytest.approx(a * b / ((a + b) * (a + b + 1)))
        assert theory.theorem_variance((a + 3) / 2, beta, a, b) == math.inf  # the finiteness bound
    assert math.isnan(theory.theorem_variance(1.0, 1.0, 0.0, 0.0))  # no fit, no prediction


def _simulate(a: float, b: float, m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Success counts of n questions with p ~ Beta(a, b) and m samples each: (p_hat, within-question variance)."""
    rng = np.random.default_rng(seed)
    k = rng.binomial(m, rng.beta(a, b, size=n))
    p_hat = k / m
    return p_hat, m * p_hat * (1 - p_hat) / (m - 1)


def test_deconvolved_fit_recovers_the_distribution_of_p():
    p_hat, v = _simulate(3.0, 2.0, 8, 40000)
    fit = theory.deconvolved_fit(p_hat, v, np.full_like(p_hat, 8))
    assert fit["n0"] == pytest.approx(5.0, rel=0.05) and fit["a"] == pytest.approx(3.0, rel=0.06)
    assert fit["tau2"] == pytest.approx(3 * 2 / (25 * 6), rel=0.04)
    nu = p_hat.mean() * (1 - p_hat.mean()) / p_hat.var(ddof=1) - 1
    assert nu < 0.7 * fit["n0"]  # a fit of p_hat counts the binomial noise as spread: far too few


def test_beta_binomial_levels():
    pmf = theory.beta_binomial_pmf(8, 3.0, 2.0)
    assert pmf.sum() == pytest.approx(1.0) and (pmf * np.arange(9)).sum() / 8 == pytest.approx(0.6)
    p_hat, _ = _simulate(3.0, 2.0, 8, 40000, seed=1)
    frequency = np.bincount(np.rint(p_hat * 8).astype(int), minlength=9) / len(p_hat)
    assert np.abs(frequency - pmf).max() < 0.01
    binomial = theory.level_pmf(8, {"n0": math.inf, "mu": 0.25})
    assert binomial[0] == pytest.approx(0.75**8) and binomial.sum() == pytest.approx(1.0)


def test_finite_m_prediction_tends_to_the_papers_and_stays_finite_where_it_diverges():
    a, b = 3.0, 2.0
    flat = {m: np.ones(m - 1) for m in (8, 400)}
    for alpha, beta in ((1.5, 1.3), (2.0, 1.6)):
        paper = theory.theorem_variance(alpha, beta, a, b) / theory.theorem_variance(1.0, 1.0, a, b)
        by_m = {m: theory.finite_m_variance(alpha, beta, theory.beta_binomial_pmf(m, a, b), flat[m])
                / theory.finite_m_variance(1.0, 1.0, theory.beta_binomial_pmf(m, a, b), flat[m]) for m in flat}
        assert by_m[400] == pytest.approx(paper, rel=0.03)
        assert abs(by_m[8] - paper) > 0.01  # the estimator sees 7 levels, not a continuum
    # alpha = (a + 3)/2: the paper's variance diverges, the estimator's (f_N at j/m, j = 1..m-1) does not
    assert theory.theorem_variance(3.0, 1.0, a, b) == math.inf
    assert math.isfinite(theory.finite_m_variance(3.0, 1.0, theory.beta_binomial_pmf(8, a, b), flat[8]))
    # kappa by level enters as a weight of each level
    kappa = np.array([10.0, 1, 1, 1, 1, 1, 1])
    pmf = theory.beta_binomial_pmf(8, a, b)
    assert theory.finite_m_variance(1.0, 1.0, pmf, kappa) == pytest.approx(
        theory.finite_m_variance(1.0, 1.0, pmf, flat[8]) + 9 * pmf[1] * 1 * 7)


def test_eb_limit_is_what_the_credibility_baseline_reaches():
    """Monte Carlo, flat kappa: the noise per unit of signal is E(s - b)^2 / (signal factor)^2; REINFORCE's
    group mean has factor (m - 1)/m, a baseline from the other samples factor 1."""
    rng = np.random.default_rng(2)
    a, b, m, n = 2.0, 6.0, 8, 400000
    p = rng.beta(a, b, size=n)
    s = rng.random((n, m)) < p[:, None]
    p_hat = s.mean(axis=1, keepdims=True)
    reinforce = ((s - p_hat) ** 2).mean() / ((m - 1) / m) ** 2
    mu, tau2 = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    sigma2 = mu * (1 - mu) - tau2
    lam = sigma2 / (sigma2 + (m - 1) * tau2)
    others = (m * p_hat - s) / (m - 1)
    credibility = ((s - (lam * mu + (1 - lam) * others)) ** 2).mean()
    assert credibility / reinforce == pytest.approx(theory.eb_limit(a + b, m), rel=0.01)
    assert theory.eb_limit(math.inf, 8) == 0.875 and theory.eb_limit(0.0, 8) == pytest.approx(1.0)


def test_reweighting_bound_by_hand():
    m, n = 4, 3000
    rng = np.random.default_rng(3)
    level = rng.integers(1, m, size=n)
    # level 1: c = 1, s = 1; level 2: c = 1, s = 0 (no signal); level 3: c = 4, s = 2 (s / c half of level 1's)
    squared = np.select([level == 1, level == 2], [1.0, 1.0], 4.0)
    along = np.select([level == 1, level == 2], [1.0, 0.0], 2.0)
    bound = theory.reweighting_bound(level, squared, along, n, m)
    c = np.array([1.0, 1.0, 4.0]) * np.bincount(level, minlength=m)[1:] / n
    s = np.array([1.0, 0.0, 2.0]) * np.bincount(level, minlength=m)[1:] / n
    expected = s.sum() ** 2 / (c.sum() * (s[[0, 2]] ** 2 / c[[0, 2]]).sum())
    assert bound["ratio"] == pytest.approx(expected, rel=0.01) and bound["ratio"] < 0.9
    assert all(math.isnan(w) for w in bound["weight"])  # relative to the middle level's, which is 0 here
    # every level with the same s / c: no weight helps, and the best weight is flat
    same = theory.reweighting_bound(level, squared, squared * 0.5, n, m)
    assert same["ratio"] == pytest.approx(1.0, rel=0.01) and same["weight"] == pytest.approx([1.0, 1.0, 1.0])
    # the middle level twice as informative per unit of E||h||^2: its weight is twice the others'
    skewed = theory.reweighting_bound(level, squared, np.where(level == 2, 1.0, 0.5) * squared, n, m)
    assert skewed["weight"] == pytest.approx([0.5, 1.0, 0.5]) and skewed["ratio"] < 1


def test_the_sweep_predicts_from_the_measured_levels_and_the_deconvolved_beta():
    from bnpo_probe.probe import ProbeSettings, theorem_sweep

    m, questions = 4, 100
    entry = {"variance": 2.0, "signal": 1.0, "per_batch_noise": 2.0}
    results = {"reinforce": dict(entry), "t=1": {**entry, "variance": 1.0, "per_batch_noise": 1.0}}
    kappa = {"mean": [4.0, 1.0, float("nan")], "count": [10, 30, 0], "overall": 1.75}
    fit = theory.deconvolved_fit(np.array([0.25, 0.5, 0.75, 0.5]), np.array([0.25, 1 / 3, 0.25, 1 / 3]),
                                 np.full(4, 4.0))
    sweep = theorem_sweep(ProbeSettings(theorem_scales=(1.0,)), m, results, {"t=1": (2.0, 1.0)}, 2.0, 2.0, fit,
                          kappa, questions)
    row = sweep["t=1"]
    assert row["variance_ratio"] == 0.5 and row["noise_ratio"] == 0.5 and sweep["t=0"]["levels_ratio"] == 1.0
    # measured levels: 10 questions at 1/4 (kappa 4), 30 at 2/4 (kappa 1); w = 1 / f_N(j/4; 2, 1) = 2 / j
    weight = {1: 2.0, 2: 1.0}
    expected = (10 * weight[1] ** 2 * 3 * 4.0 + 30 * weight[2] ** 2 * 4 * 1.0) / (10 * 3 * 4.0 + 30 * 4 * 1.0)
    assert row["levels_ratio"] == pytest.approx(expected)
    # the deconvolved Beta's levels, with the empty level's kappa the overall mean
    pmf = theory.level_pmf(m, fit)
    kappas = [4.0, 1.0, 1.75]
    w = [1 / (2 * j / m) for j in (1, 2, 3)]
    expected = sum(pmf[j] * w[j - 1] ** 2 * j * (m - j) * kappas[j - 1] for j in (1, 2, 3)) / sum(
        pmf[j] * j * (m - j) * kappas[j - 1] for j in (1, 2, 3))
    assert row["predicted_ratio"] == pytest.approx(expected)
    assert row["paper_ratio"] == pytest.approx(theory.theorem_variance(2.0, 1.0, 2.0, 2.0)
                                               / theory.theorem_variance(1.0, 1.0, 2.0, 2.0))
