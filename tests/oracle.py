"""A slow, independent oracle for BNPO written straight from the paper's formulas (arXiv 2506.02864: the
advantage, the method-of-moments fit, Theorem 1's alpha, beta, AD-BNPO) and the published code's behaviour.

Plain Python floats and ``math`` only, one sample at a time: nothing shared with ``bnpo``.
"""

from __future__ import annotations

import math


def beta_pdf(p: float, alpha: float, beta: float) -> float:
    """f_N(p; alpha, beta) with the boundary values written out case by case."""
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    if p == 0.0:
        if alpha > 1:
            return 0.0
        if alpha == 1:
            return math.exp((beta - 1) * math.log1p(-p) - log_b)
        return math.inf
    if p == 1.0:
        if beta > 1:
            return 0.0
        if beta == 1:
            return math.exp((alpha - 1) * math.log(p) - log_b)
        return math.inf
    return math.exp((alpha - 1) * math.log(p) + (beta - 1) * math.log(1 - p) - log_b)


def moments_fit(p_hats: list[float]) -> tuple[float, float, float, float]:
    """(mu, var, a, b) as the reference computes them (single question: mu = 0, var = 1)."""
    n = len(p_hats)
    if n == 1:
        mu, var = 0.0, 1.0
    else:
        mu = sum(p_hats) / n
        var = sum((p - mu) ** 2 for p in p_hats) / (n - 1)
    nu = mu * (1 - mu) / var - 1
    return mu, var, mu * nu, (1 - mu) * nu


def reference_advantages(
    rewards: list[float],
    uids: list,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
    fixed: tuple[float, float] | None = None,
    max_weight: float = 1e6,
) -> tuple[list[float], dict]:
    """Scalar advantage per sample, and the fit, following the paper's formulas and the published code's behaviour."""
    s = [(r - reward_min) / (reward_max - reward_min) for r in rewards]
    groups: dict = {}
    for value, uid in zip(s, uids):
        groups.setdefault(uid, []).append(value)
    p_hat = {uid: sum(v) / len(v) for uid, v in groups.items()}
    if fixed is None:
        mu, var, a, b = moments_fit(list(p_hat.values()))
        alpha, beta = max(1.0, 1 + a / 3), max(1.0, 1 + b / 3)
    else:
        (mu, var, a, b), (alpha, beta) = (None,) * 4, fixed
    out = []
    for value, uid in zip(s, uids):
        density = beta_pdf(p_hat[uid], alpha, beta)
        weight = max_weight if density == 0 else min(max_weight, max(0.0, 1 / density))
        out.append(weight * (value - p_hat[uid]))
    return out, {"mu": mu, "var": var, "a": a, "b": b, "alpha": alpha, "beta": beta}


def reference_ad_bnpo(components: dict[str, list[float]], uids: list, weights=None) -> list[float]:
    """AD-BNPO (the paper's advantage decomposition): the (weighted) mean of each component's own BNPO advantage,
    each component's rewards in [0, 1]."""
    keys = list(components)
    weights = weights or [1.0] * len(keys)
    total = sum(weights)
    per = [reference_advantages(components[k], uids)[0] for k in keys]
    return [sum(w * adv[i] for w, adv in zip(weights, per)) / total for i in range(len(uids))]
