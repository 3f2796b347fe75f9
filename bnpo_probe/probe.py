"""``python -m bnpo_probe``: the gradient noise of each estimator at a fixed policy, and what is possible.

Theorem 1 of the paper is about the variance of the policy-gradient estimator at a fixed policy; a training run's
gradient norms mix that noise with the policy's drift, so the probe holds the policy fixed. At snapshots of a training
run (0: the warm-started policy) it draws K = ``batches`` independent training-like batches, and on each computes every
estimator's gradient of the training loss (verl's ``compute_advantage``, then verl's ``vanilla`` policy loss at ratio
1). Every estimator sees the same batches (paired); each (regime, seed, snapshot) and purpose has its own streams.

    per-batch noise  tr Cov(g) / ||E g||^2 of one batch's gradient, both unbiased: scale-free, lower is steadier.
    unbiased cosine  cos(E g, grad J), both squared norms debiased; grad J from REINFORCE on ``reference_batches``
                     further batches. It does not move with the noise: it shows the bias that reweighting brings.
    fits             the spread of the fitted a, b, alpha, beta over the K batches (adaptive BNPO estimators).

Theory (``theory``): the Beta fit (a, b) of p_hat on ``fit_batches`` further batches, and the deconvolved fit of p.
BNPO at the fixed (1 + t a/3, 1 + t b/3), t in ``theorem_scales`` (0: REINFORCE, 1: the theorem's), is measured beside
the paper's prediction and the one for the estimator as it is (m samples, p deconvolved, kappa = ||h_q||^2 /
(m p_hat (1 - p_hat)) by level, h_q = sum_o (s_o - p_hat) grad log pi(o), which the theorem assumes flat). The h_q
on grad J give the least noise a per-question weight could reach; the deconvolved spread, a reward-only baseline's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from verl import DataProto

from bnpo.core import fit_beta_moments

from .loop import (ESTIMATORS, EstimatorSpec, Settings, actor_config, estimate_advantages, policy_loss,
                   report_progress, rollout, run_jobs, train, warm_start)
from .measures import GradientSums, kappa_by_level, measure, spread
from .task import response_log_probs
from .theory import (deconvolved_fit, eb_limit, finite_m_variance, level_pmf, reweighting_bound, theorem_normaliser,
                     theorem_variance)

# Two regimes of per-question success rates, as overrides of the probe loop's Settings (measured a, b: README). The
# probe trains its own policy in its own loop (warm start, batch size, loss aggregation), not the verl demo's.
REGIMES: dict[str, dict[str, Any]] = {
    # the probe loop's defaults: strings of 1..6 digits, so p(q) is near 0 or 1 for most questions (a, b < 1)
    "u_shaped": {},
    # every string has 6 digits and a longer warm start makes the policy nearly always right at temperature 1;
    # sampling (and scoring) at temperature 2 then puts every question's success rate near 0.5 (a, b > 1)
    "unimodal": {"min_digits": 6, "max_digits": 6, "warm_start_steps": 600, "temperature": 2.0},
}
REGIME_DESCRIPTIONS = {
    "u_shaped": "the probe loop's defaults: 1-6 digits, 200-step warm start, temperature 1",
    "unimodal": "6 digits, 600-step warm start, temperature 2",
}
FIT_KEYS = ("a", "b", "alpha", "beta")
REFERENCE = "reinforce"  # its mean gradient estimates the direction of the true policy gradient


@dataclass(frozen=True)
class ProbeSettings:
    """Every setting of the probe (defaults: the committed run of docs/demo.md); each regime's training run is the
    loop's ``Settings`` with the regime's and ``loop_overrides``' changes."""

    estimators: tuple[str, ...] = ("reinforce", "grpo", "bnpo", "eb_loo", "bnpo_eb_loo")
    regimes: tuple[str, ...] = ("u_shaped", "unimodal")
    seeds: tuple[int, ...] = (0, 1, 2)
    snapshots: tuple[int, ...] = (0, 100)  # RL steps of the training run at which the policy is probed
    trainer: str = "bnpo"  # the estimator that trains the run between snapshots
    batches: int = 48  # K: independent batches per snapshot
    reference_batches: int = 128  # batches of the reference gradient
    fit_batches: int = 40  # the snapshot's Beta fits for the theorem (bnpo 0.2's pool warm-up: the same batches)
    theorem_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # t of (1 + t a/3, 1 + t b/3); t = 0 is reinforce
    kappa_min_count: int = 10  # a level of p_hat with fewer questions shows no kappa estimate
    workers: int = 2  # (regime, seed) jobs in parallel processes
    num_threads: int = 1  # torch intra-op threads per process
    loop_overrides: tuple[tuple[str, Any], ...] = ()  # applied to every regime's Settings (the smoke test's sizes)

    def __post_init__(self) -> None:
        unknown = [name for name in (*self.estimators, self.trainer) if name not in ESTIMATORS]
        if unknown:
            raise ValueError(f"unknown estimator(s) {unknown}; choose from {sorted(ESTIMATORS)} (--estimators).")
        if REFERENCE not in self.estimators:
            raise ValueError(f"the probe's reference gradient is {REFERENCE!r}'s: keep it in --estimators.")
        bad = [name for name in self.regimes if name not in REGIMES]
        if bad:
            raise ValueError(f"unknown regime(s) {bad}; choose from {sorted(REGIMES)} (--regime).")
        if self.batches < 2 or self.reference_batches < 1 or self.fit_batches < 1:
            raise ValueError("need batches >= 2, reference_batches >= 1 and fit_batches >= 1.")
        if not self.seeds or not self.snapshots or min(self.snapshots) < 0:
            raise ValueError(f"need at least one seed and snapshots >= 0, got {self.seeds} and {self.snapshots}.")

    def loop_settings(self, regime: str) -> Settings:
        """The probe loop's Settings of a regime, run up to the last snapshot."""
        return replace(Settings(), **{**REGIMES[regime], **dict(self.loop_overrides), "steps": max(self.snapshots)})


def draw_batches(s: Settings, model: torch.nn.Module, key: tuple, purpose: str, count: int) -> Iterator[DataProto]:
    """``count`` training-like batches from the policy; each (snapshot ``key``, purpose) has its own random streams,
    seeded from their names (stable across runs and processes). Each batch, once used, is a unit of progress."""

    def generator(stream: str) -> torch.Generator:
        digest = hashlib.sha256(repr((*key, purpose, stream)).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**62 - 1))

    questions, sampler = generator("questions"), generator("sampler")
    for _ in range(count):
        yield rollout(s, model, s.task.sample_prompts(s.prompts_per_step, questions), sampler)
        report_progress((*key, purpose))


def batch_gradients(s: Settings, model: torch.nn.Module, batch: DataProto,
                    specs: dict[str, EstimatorSpec]) -> dict[str, tuple[torch.Tensor, Any]]:
    """Each estimator's gradient (P,) of the training loss on ``batch``, and its BNPO statistics. One forward pass;
    the loss is verl's policy loss at ratio 1 (old_log_probs are the snapshot's own)."""
    params = [p for p in model.parameters() if p.requires_grad]
    actor_cfg = actor_config(s)
    log_prob = response_log_probs(model, batch.batch["prompts"], batch.batch["responses"], s.temperature)
    drift = (log_prob.detach() - batch.batch["old_log_probs"]).abs().max().item()
    if drift > 1e-4:
        raise RuntimeError(f"the batch was not sampled from this policy (log-prob difference {drift:.2g}).")
    out = {}
    for name, spec in specs.items():
        scored, stats = estimate_advantages(spec, batch)
        grads = torch.autograd.grad(policy_loss(s, log_prob, scored, actor_cfg), params, retain_graph=True)
        out[name] = (torch.cat([g.reshape(-1) for g in grads]), stats)
    return out


def question_gradients(s: Settings, model: torch.nn.Module, batch: DataProto,
                       direction: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
    """Per question with mixed outcomes: its level j (p_hat = j/m), ||h_q||^2 and h_q . direction, where
    h_q = sum_o (s_o - p_hat) grad log pi(o), from verl's loss on the question's samples with REINFORCE's
    advantages; ``direction`` (P,) a unit vector. Three lists of equal length (one backward pass per question)."""
    params = [p for p in model.parameters() if p.requires_grad]
    actor_cfg, m = actor_config(s), s.rollout_n
    scored, _ = estimate_advantages(ESTIMATORS[REFERENCE], batch)
    reward = batch.batch["token_level_rewards"].sum(dim=1).view(-1, m)
    levels, squared, along = [], [], []
    for q, successes in enumerate(reward.sum(dim=1).round().long().tolist()):  # questions, not samples
        if not 0 < successes < m:
            continue
        rows = scored[q * m : (q + 1) * m]  # rollout repeats each question m times, interleaved
        log_prob = response_log_probs(model, rows.batch["prompts"], rows.batch["responses"], s.temperature)
        loss = policy_loss(s, log_prob, rows, actor_cfg)  # seq-mean: -(1/m) sum_o A_o log pi(o)
        h = -m * torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()
        levels.append(successes)
        squared.append(h.pow(2).sum().item())
        along.append((h @ direction).item())
    return levels, squared, along


def ratio(value: float | None, reference: float | None) -> float:
    """value / reference; nan unless the reference is positive and finite (inf / finite stays inf)."""
    ok = value is not None and reference is not None and 0 < reference < math.inf  # None: a JSON null (inf, nan)
    return value / reference if ok else math.nan


def theorem_sweep(p: ProbeSettings, m: int, results: dict[str, dict], theorem: dict, a: float, b: float, fit: dict,
                  kappa: dict, questions: int) -> dict[str, dict]:
    """The fixed-normaliser sweep: measured variance, signal and noise against t = 0 (REINFORCE), beside four
    predictions of the variance ratio, from the most to the least of Theorem 1's model: paper_ratio (continuous
    p ~ Beta(a, b) fitted to p_hat, flat kappa), flat_ratio (the m + 1 levels of p_hat, Beta-binomial with the
    deconvolved Beta), predicted_ratio (the same with each level's measured kappa: the estimator as it is) and
    levels_ratio (the levels' frequencies as measured among ``questions``: no model of p, a check that the levels
    and kappa explain the variance)."""
    pmf = level_pmf(m, fit) if fit["n0"] > 0 else None  # n0 <= 0: a spread no Beta has
    # a level without any question has no kappa: it takes the mean of all (it then weighs P(level), tiny there)
    measured = np.nan_to_num(np.asarray(kappa["mean"], dtype=np.float64), nan=kappa["overall"])
    frequency = np.concatenate([[0.0], np.asarray(kappa["count"], dtype=np.float64) / questions, [0.0]])
    predictions = {"predicted_ratio": (pmf, measured), "flat_ratio": (pmf, np.ones(m - 1)),
                   "levels_ratio": (frequency, measured)}

    reference = results[REFERENCE]
    sweep = {"t=0": {"t": 0.0, "alpha": 1.0, "beta": 1.0, **reference}}
    for t, key in zip(p.theorem_scales, theorem):
        alpha, beta = theorem[key]
        sweep[key] = {"t": t, "alpha": alpha, "beta": beta, **results.pop(key)}
    for entry in sweep.values():
        alpha, beta = entry["alpha"], entry["beta"]
        entry["variance_ratio"] = ratio(entry["variance"], reference["variance"])
        entry["signal_ratio"] = ratio(entry["signal"], reference["signal"])
        entry["noise_ratio"] = ratio(entry["per_batch_noise"], reference["per_batch_noise"])
        for key, (levels, by_level) in predictions.items():
            entry[key] = math.nan if levels is None else ratio(finite_m_variance(alpha, beta, levels, by_level),
                                                                 finite_m_variance(1.0, 1.0, levels, by_level))
        entry["paper_ratio"] = ratio(theorem_variance(alpha, beta, a, b), theorem_variance(1.0, 1.0, a, b))
    return sweep


def probe_snapshot(p: ProbeSettings, s: Settings, regime: str, seed: int, step: int,
                   state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every measurement at one snapshot (a fixed policy): a JSON-ready dict."""
    model = s.policy(seed)
    model.load_state_dict(state)
    stream, m = (regime, seed, step), s.rollout_n  # this snapshot's own random streams (with each draw's purpose)

    # the Beta fit of p_hat and the deconvolved fit of p (the stream keeps bnpo 0.2's name: the same batches)
    reward = torch.cat([b.batch["token_level_rewards"].sum(dim=1).view(-1, m) 
                        for b in draw_batches(s, model, stream, "warmup", p.fit_batches)])
    p_hat = reward.double().mean(dim=1)
    within = reward.double().var(dim=1)  # unbiased: sum (s - p_hat)^2 / (m - 1)
    deconvolved = deconvolved_fit(p_hat.numpy(), within.numpy(), np.full(len(p_hat), float(m)))
    fit = fit_beta_moments(p_hat)
    a, b = float(fit.a), float(fit.b)
    theorem = {f"t={t:g}": theorem_normaliser(t, a, b) for t in p.theorem_scales}
    specs = {**{name: ESTIMATORS[name] for name in p.estimators},
             **{key: EstimatorSpec("bnpo", bnpo={"fixed_alpha": alpha, "fixed_beta": beta})
                for key, (alpha, beta) in theorem.items()}}

    reference = GradientSums()
    for batch in draw_batches(s, model, stream, "reference", p.reference_batches):
        reference.add(batch_gradients(s, model, batch, {REFERENCE: specs[REFERENCE]})[REFERENCE][0])
    direction = reference.mean / reference.mean.norm().clamp(min=torch.finfo(torch.float64).tiny)

    grads: dict[str, list[torch.Tensor]] = {name: [] for name in specs}
    # adaptive BNPO estimators (alpha, beta from the batch's fit, not fixed) also keep their fits
    fits: dict[str, list[Any]] = {name: [] for name, spec in specs.items()
                                  if spec.adv_estimator == "bnpo" and (spec.bnpo or {}).get("fixed_alpha") is None}
    levels, squared, along = [], [], []
    for batch in draw_batches(s, model, stream, "probe", p.batches):
        for name, (grad, stats) in batch_gradients(s, model, batch, specs).items():
            grads[name].append(grad)
            if name in fits:
                fits[name].append(stats)
        for into, values in zip((levels, squared, along), question_gradients(s, model, batch, direction)):
            into.extend(values)

    results = {name: measure(torch.stack(grads[name]), reference) for name in specs}
    for name, stats in fits.items():
        results[name]["fits"] = {key: spread([getattr(st, key) for st in stats]) for key in FIT_KEYS}
    level = np.asarray(levels, dtype=np.int64)
    kappa_values = np.asarray(squared) / (m * (level / m) * (1 - level / m)) if levels else np.zeros(0)
    kappa = kappa_by_level(level / m, kappa_values, m, p.kappa_min_count)
    questions = p.batches * s.prompts_per_step
    sweep = theorem_sweep(p, m, results, theorem, a, b, deconvolved, kappa, questions)
    limits = {"baseline": eb_limit(deconvolved["n0"], m),
              "reweighting": reweighting_bound(level, np.asarray(squared), np.asarray(along), questions, m)}
    return {"regime": regime, "seed": seed, "step": step, "reward": float(p_hat.mean()),
            "mixed_frac": float(((p_hat > 0) & (p_hat < 1)).double().mean()),
            "a": a, "b": b,  # the Beta fit of the fit batches' p_hat (what BNPO fits)
            "deconvolved": deconvolved,  # the moments of p behind p_hat (what a baseline should shrink with)
            "estimators": results, "theorem": sweep, "kappa": kappa, "limits": limits}


def probe_job(p: ProbeSettings, regime: str, seed: int) -> list[dict[str, Any]]:
    """Warm start, a training run to the last snapshot, and the probe of every snapshot of one (regime, seed)."""
    s = p.loop_settings(regime)
    states = train(s, p.trainer, seed, warm_start(s, seed), p.snapshots,
                   lambda step: report_progress((regime, seed, step, "train")))
    return [probe_snapshot(p, s, regime, seed, step, states[step]) for step in sorted(p.snapshots)]


def run_probe(p: ProbeSettings, show_progress: bool = True) -> list[dict[str, Any]]:
    """Every (regime, seed) job, ``p.workers`` at a time; one dict per (regime, seed, snapshot)."""
    jobs = [(probe_job, (p, regime, seed)) for regime in p.regimes for seed in p.seeds]
    tqdm.monitor_interval = 0  # no monitor thread: worker processes may be forked while the bar is open
    # a job's units of progress: its training steps and every batch it draws
    units = max(p.snapshots) + len(p.snapshots) * (p.fit_batches + p.reference_batches + p.batches)
    with tqdm(total=len(jobs) * units, desc="probe", unit="batch", disable=not show_progress) as bar:

        def advance(message: tuple) -> None:  # (regime, seed, step, phase)
            bar.set_postfix_str("{} seed={} step={} {}".format(*message), refresh=False)
            bar.update(1)

        points = run_jobs(jobs, p.workers, p.num_threads, advance)
    return [point for job in points for point in job]
