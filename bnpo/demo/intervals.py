"""Intervals for the demo's held-out comparisons: a paired bootstrap over seeds and questions. Every estimator trains
from one checkpoint with the same seeds and is scored on the same questions, so a bootstrap sample draws seeds and
questions once and computes every gain and difference on that draw; both levels are noise (another seed is another
training run, another question set another test). Outcomes are ``(S, Q)``: a result in [0, 1] per seed and question.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5% quantile, for the seeds a gap needs


def interval(values: np.ndarray, seed_w: np.ndarray, question_w: np.ndarray) -> dict[str, float | bool]:
    """The mean of ``values`` (S, Q), its percentile interval over the bootstrap samples drawn by ``seed_w`` (draws, S)
    and ``question_w`` (draws, Q), and whether the interval holds 0 (``separable`` is False then). Resampling S seeds
    gives the seed mean a variance (S - 1) / S of the unbiased one: half of it with 2 seeds, an interval too narrow by
    1/sqrt(2) where seeds dominate. Each seed's deviation from the seeds' mean is scaled by sqrt(S / (S - 1)) first,
    which removes that bias (the questions' factor, sqrt(Q / (Q - 1)), is left: Q >= 100)."""
    seeds, questions = values.shape
    scaled = values
    if seeds > 1:
        across = values.mean(axis=0, keepdims=True)
        scaled = across + np.sqrt(seeds / (seeds - 1)) * (values - across)
    draws = np.einsum("bs,sq,bq->b", seed_w, scaled, question_w) / (seeds * questions)
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high),
            "separable": bool(low > 0 or high < 0)}


def variance_components(diff: np.ndarray) -> tuple[float, float, float]:
    """(seed, question, residual) variances of ``diff`` (S, Q) under d[s, q] = mu + seed_s + question_q + e_sq, from
    the two-way analysis of variance without replication (method of moments, negative estimates set to 0)."""
    seeds, questions = diff.shape
    seed_means, question_means = diff.mean(axis=1), diff.mean(axis=0)
    residual = diff - seed_means[:, None] - question_means[None, :] + diff.mean()
    ms_error = float((residual ** 2).sum() / ((seeds - 1) * (questions - 1)))
    ms_seed = questions * float(np.var(seed_means, ddof=1))
    ms_question = seeds * float(np.var(question_means, ddof=1))
    return max(0.0, (ms_seed - ms_error) / questions), max(0.0, (ms_question - ms_error) / seeds), ms_error


def seeds_for_gap(diff: np.ndarray, gap: float = 0.05) -> float | None:
    """Seeds a difference ``diff`` (S, Q) would need for the half-width of ``compare``'s 95% interval to fall to
    ``gap`` on these Q questions: the smallest S' with Z^2 (var_seed / S' + var_question / Q + 3 var_residual / (S' Q))
    <= gap^2, from the measured ``variance_components``. Resampling both seeds and questions counts the seed x question
    noise about three times where the experiment holds it once (Owen 2007, the pigeonhole bootstrap), so the interval
    is conservative there, and this is the seeds for that interval. inf when the questions' share alone is wider than
    ``gap`` (more questions needed, not seeds); None with one seed (no seed variance measured)."""
    seeds, questions = diff.shape
    if seeds < 2:
        return None
    var_seed, var_question, var_residual = variance_components(diff)
    room = (gap / Z) ** 2 - var_question / questions
    if room <= 0:
        return float("inf")
    return float(max(1.0, np.ceil((var_seed + 3 * var_residual / questions) / room)))


def compare(start: np.ndarray, end: dict[str, np.ndarray], draws: int = 10_000, seed: int = 0,
            gap: float = 0.05) -> dict[str, dict]:
    """Gains and paired differences with 95% intervals: ``start`` (Q,) or (S, Q) held-out outcomes before training
    (one checkpoint for every estimator), ``end`` estimator -> (S, Q) after, seeds and questions in one order for all.
    Returns {"gains": {estimator: interval of end - start}, "differences": {"a - b": interval of end_a - end_b and
    its ``seeds_for_gap``}}."""
    names = list(end)
    seeds, questions = end[names[0]].shape
    for name in names:
        if end[name].shape != (seeds, questions):
            raise ValueError(f"{name}: outcomes of shape {end[name].shape}, expected {(seeds, questions)} like "
                             f"{names[0]}")
    start = np.broadcast_to(np.asarray(start, dtype=float), (seeds, questions))
    # how often each seed and each question is drawn in each bootstrap sample: (draws, S) and (draws, Q) counts
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=draws)
    question_w = rng.multinomial(questions, np.full(questions, 1 / questions), size=draws)
    return {"gains": {name: interval(end[name] - start, seed_w, question_w) for name in names},
            "differences": {f"{a} - {b}": {**interval(end[a] - end[b], seed_w, question_w),
                                           "seeds_for_gap": seeds_for_gap(end[a] - end[b], gap)}
                            for a, b in combinations(names, 2)}}
