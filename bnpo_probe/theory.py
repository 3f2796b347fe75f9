"""What theory predicts at a snapshot (pure numpy / math): Theorem 1 as the paper states it and for the estimator as
it is, and the limits of what a reward-only baseline or a per-question weight can do.

Notation: m samples per question, p ~ the distribution of success rates, p_hat = j/m the sample mean, and for a
question with mixed outcomes h_q = sum_o (s_o - p_hat) grad log pi(o), kappa = ||h_q||^2 / (m p_hat (1 - p_hat)).
"""

from __future__ import annotations

import math

import numpy as np


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def theorem_variance(alpha: float, beta: float, a: float, b: float) -> float:
    """The paper's Theorem 1: E_p[p (1 - p) / f_N(p)^2] for p ~ Beta(a, b), up to a constant:
    B(alpha, beta)^2 B(a + 3 - 2 alpha, b + 3 - 2 beta) / B(a, b). inf where the integral diverges
    (alpha >= (a + 3) / 2 or beta >= (b + 3) / 2); nan when Beta(a, b) is no distribution."""
    if not (a > 0 and b > 0):
        return math.nan
    x, y = a + 3 - 2 * alpha, b + 3 - 2 * beta
    if x <= 0 or y <= 0:
        return math.inf
    return math.exp(2 * _log_beta(alpha, beta) + _log_beta(x, y) - _log_beta(a, b))


def theorem_normaliser(t: float, a: float, b: float) -> tuple[float, float]:
    """(1 + t a/3, 1 + t b/3), at least 1 as BNPO's own choice (t = 1)."""
    return max(1.0, 1 + t * a / 3), max(1.0, 1 + t * b / 3)


def deconvolved_fit(p_hat: np.ndarray, v: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """The moments of p behind the sample means ``p_hat`` (n,) of questions with ``m`` (n,) samples each and
    within-question variances ``v`` (n,) (sum (s - p_hat)^2 / (m - 1)): mu, S^2 (unbiased variance of p_hat),
    E = mean v / m (its binomial part), tau2 = max(0, S^2 - E) (Var p), n0 = mu (1 - mu) / tau2 - 1 (inf without
    spread) and the Beta (a, b) = (mu n0, (1 - mu) n0) with that variance."""
    p_hat, v, m = (np.asarray(x, dtype=np.float64) for x in (p_hat, v, m))
    mu = float(p_hat.mean())
    s2 = float(p_hat.var(ddof=1))
    noise = float((v / m)[m >= 2].mean())
    tau2 = max(0.0, s2 - noise)
    n0 = mu * (1 - mu) / tau2 - 1 if tau2 > 0 else math.inf
    return {"mu": mu, "s2": s2, "noise": noise, "tau2": tau2, "n0": n0, "a": mu * n0, "b": (1 - mu) * n0}


def beta_binomial_pmf(m: int, a: float, b: float) -> np.ndarray:
    """P(j successes of m), (m + 1,), when p ~ Beta(a, b) with a, b > 0 (in log space)."""
    if not (a > 0 and b > 0 and math.isfinite(a + b)):
        raise ValueError(f"Beta({a}, {b}) is no distribution")
    return np.exp(np.array([math.lgamma(m + 1) - math.lgamma(j + 1) - math.lgamma(m - j + 1)
                            + _log_beta(a + j, b + m - j) - _log_beta(a, b) for j in range(m + 1)]))


def level_pmf(m: int, fit: dict[str, float]) -> np.ndarray:
    """P(p_hat = j/m), (m + 1,), under the deconvolved fit: Beta-binomial, or binomial when p has no spread."""
    if math.isinf(fit["n0"]):
        return np.array([math.comb(m, j) * fit["mu"] ** j * (1 - fit["mu"]) ** (m - j) for j in range(m + 1)])
    return beta_binomial_pmf(m, fit["a"], fit["b"])


def finite_m_variance(alpha: float, beta: float, pmf: np.ndarray, kappa: np.ndarray, max_weight: float = 1e6) -> float:
    """The second moment of one question's gradient under BNPO with the fixed normaliser (alpha, beta), up to a
    constant: sum_j P(j) w_j^2 j (m - j) kappa_j over the mixed levels j = 1..m-1, w_j = min(1 / f_N(j/m), max_weight).
    ``pmf`` (m + 1,): P(p_hat = j/m); ``kappa`` (m - 1,): the mean kappa at each mixed level."""
    m = len(pmf) - 1
    total = 0.0
    for j in range(1, m):  # m - 1 levels: not samples
        p = j / m
        log_density = (alpha - 1) * math.log(p) + (beta - 1) * math.log1p(-p) - _log_beta(alpha, beta)
        total += pmf[j] * min(math.exp(-log_density), max_weight) ** 2 * j * (m - j) * kappa[j - 1]
    return total


def eb_limit(n0: float, m: int) -> float:
    """The best reward-only baseline's noise over REINFORCE's: (m - 1)/m (1 + 1/(n0 + m - 1)) ((m - 1)/m at n0 = inf).

    With flat kappa, REINFORCE's group-mean baseline costs p (1 - p) m / (m - 1) per unit of signal; a baseline
    independent of the sample's own reward costs p (1 - p) + its mean squared error, and the credibility estimate from
    the m - 1 other samples has the least, E[p (1 - p)] / (n0 + m - 1).
    """
    return (m - 1) / m * (1 + (0.0 if math.isinf(n0) else 1 / (n0 + m - 1)))


def reweighting_bound(level: np.ndarray, squared: np.ndarray, along: np.ndarray, total: int, m: int) -> dict:
    """The least noise a per-question weight w(p_hat) can reach, over REINFORCE's, from measured per-question
    gradients: ``level`` (n,) j of each mixed question, ``squared`` (n,) ||h_q||^2, ``along`` (n,) h_q . u with u the
    direction of grad J; ``total``: how many questions were drawn (the others have h_q = 0). Minimising
    E||G||^2 / (E G . u)^2 gives w_j proportional to s_j / c_j (per level c_j = sum ||h_q||^2 / total, s_j =
    sum h_q . u / total) and the ratio (sum_j s_j)^2 / (sum_j c_j sum_j s_j^2 / c_j), the squares debiased. Returns
    that ratio and w_j relative to the middle level's (nan where a level has no question)."""
    level, squared, along = (np.asarray(x) for x in (level, squared, along))

    def mean_and_square(y: np.ndarray) -> tuple[float, float]:
        """The mean of y over ``total`` questions (its zeros left out of y) and its square, debiased."""
        mean = y.sum() / total
        variance = (np.square(y).sum() - total * mean**2) / (total - 1) if total > 1 else 0.0
        return mean, max(mean**2 - variance / total, 0.0)

    c, s, s2 = np.zeros(m - 1), np.zeros(m - 1), np.zeros(m - 1)
    for j in range(1, m):  # the m - 1 levels
        at = level == j
        c[j - 1] = squared[at].sum() / total
        s[j - 1], square = mean_and_square(np.where(at, along, 0.0))
        s2[j - 1] = square if at.any() else 0.0
    _, signal = mean_and_square(along)
    used = c > 0
    gain = float((s2[used] / c[used]).sum())
    # nan: the signal is not resolved. At most 1: equal weights (REINFORCE) are one of the weights it chooses from, so
    # a ratio above 1 is the debiasing's sampling noise, not a possible loss.
    ratio = min(signal / (c.sum() * gain), 1.0) if gain > 0 and signal > 0 else math.nan
    weight = np.where(used, s / np.where(used, c, 1.0), math.nan)
    middle = weight[m // 2 - 1]
    relative = weight / middle if np.isfinite(middle) and middle != 0 else np.full(m - 1, math.nan)
    return {"ratio": ratio, "weight": relative.tolist(), "c": c.tolist(), "s": s.tolist()}
