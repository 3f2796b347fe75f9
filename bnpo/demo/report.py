"""What the demo writes: metrics.csv (one row per step, seed and estimator), summary.json, figures, a table."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .experiment import ESTIMATORS, RunResult, Settings
from .portable import machine

COLUMNS = (
    "estimator",
    "seed",
    "step",
    "reward",
    "mixed_frac",
    "grad_norm",
    "adv_mean",
    "adv_std",
    "adv_abs_max",
    "response_length",
    "pg_loss",
    "pg_clipfrac",
    "pg_clipfrac_lower",
    "ppo_kl",
    "lr",
    "bnpo_mu",
    "bnpo_var",
    "bnpo_a",
    "bnpo_b",
    "bnpo_alpha",
    "bnpo_beta",
)
# per-run statistics, averaged over seeds in summary.json (each with a "<name>_sd" spread across seeds)
RUN_STATS = (
    "initial_reward",
    "final_reward",
    "train_reward_last",
    "grad_norm_mean",
    "grad_norm_std",
    "grad_norm_cv",
    "grad_norm_spike",
)


def write_metrics_csv(results: list[RunResult], path: Path, components: tuple[str, ...] = ()) -> None:
    """One row per (estimator, seed, step); statistics an estimator does not produce are left empty.
    ``components``: the task's reward components, whose training rates follow the reward column."""
    columns = (*COLUMNS[:4], *components, *COLUMNS[4:])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for result in results:
            for row in result.rows:
                writer.writerow(["" if _is_nan(row[c]) else row[c] for c in columns])


def run_stats(result: RunResult) -> dict[str, float]:
    """Reward and gradient-norm statistics of one run, over its steps.

    grad_norm_cv = std / mean of the pre-clip gradient norm: the scale-free stability measure (the estimators'
    advantages have different scales). grad_norm_spike = max / median: how far the worst step stands out.
    """
    grad_norm = np.array([row["grad_norm"] for row in result.rows])
    reward = np.array([row["reward"] for row in result.rows])
    last = max(1, len(reward) // 10)
    stats = {
        "initial_reward": result.initial_reward,
        "final_reward": result.final_reward,
        "train_reward_last": float(reward[-last:].mean()),
        "grad_norm_mean": float(grad_norm.mean()),
        "grad_norm_std": float(grad_norm.std()),
        "grad_norm_cv": float(grad_norm.std() / grad_norm.mean()),
        "grad_norm_spike": float(grad_norm.max() / np.median(grad_norm)),
    }
    if result.evals:  # the held-out rate of each reward component (the format variant's acc and format)
        first, final = result.evals[0], result.evals[-1]
        for key in first:
            if key not in ("step", "reward"):
                stats[f"initial_{key}"], stats[f"final_{key}"] = first[key], final[key]
    return stats


def summarize(results: list[RunResult], s: Settings) -> dict:
    """summary.json: per estimator, each run statistic's mean over seeds, its spread ("_sd") and the per-seed values."""
    estimators = {}
    for name in s.estimators:
        per_seed = {str(r.seed): run_stats(r) for r in results if r.estimator == name}
        entry: dict = {"description": ESTIMATORS[name].description, "seeds": len(per_seed)}
        for key in next(iter(per_seed.values())):  # RUN_STATS, and the components' rates where there are some
            values = np.array([stats[key] for stats in per_seed.values()])
            entry[key] = float(values.mean())
            entry[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry["per_seed"] = per_seed
        entry["evals"] = {str(r.seed): r.evals for r in results if r.estimator == name}
        estimators[name] = entry
    return {"settings": asdict(s), "machine": machine(), "estimators": estimators}


def format_table(summary: dict) -> str:
    """The summary as a fixed-width table (mean ± sd over seeds), most stable gradient norm first."""
    header = (
        f"{'estimator':<12} {'reward: initial -> final':>26} {'grad-norm mean':>15} {'CV (std/mean)':>15}"
        f" {'max/median':>11}"
    )
    lines = [header, "-" * len(header)]
    ranked = sorted(summary["estimators"].items(), key=lambda item: item[1]["grad_norm_cv"])
    for name, e in ranked:
        lines.append(
            f"{name:<12} {e['initial_reward']:>9.3f} -> {e['final_reward']:.3f} ± {e['final_reward_sd']:.3f}"
            f" {e['grad_norm_mean']:>8.3f} ± {e['grad_norm_mean_sd']:.2f}"
            f" {e['grad_norm_cv']:>8.3f} ± {e['grad_norm_cv_sd']:.2f}"
            f" {e['grad_norm_spike']:>5.2f} ± {e['grad_norm_spike_sd']:.1f}"
        )
    return "\n".join(lines)


def _series(results: list[RunResult], name: str, key: str) -> np.ndarray:
    """(seeds, steps) values of one metric for one estimator."""
    return np.array([[row[key] for row in r.rows] for r in results if r.estimator == name])


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis (shorter window at the start)."""
    cumsum = np.cumsum(x, axis=-1)
    out = cumsum.copy()
    out[..., window:] = cumsum[..., window:] - cumsum[..., :-window]
    counts = np.minimum(np.arange(1, x.shape[-1] + 1), window)
    return out / counts


def plot(results: list[RunResult], summary: dict, s: Settings, out: Path) -> list[Path]:
    """gradnorm.png (the analogue of the paper's Fig. 2) and reward.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, s.steps + 1)
    colors = {name: f"C{i}" for i, name in enumerate(s.estimators)}
    fig, (ax_curve, ax_cv) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    seed = s.seeds[0]
    for name in s.estimators:
        (run,) = [r for r in results if r.estimator == name and r.seed == seed]
        ax_curve.plot(steps, [row["grad_norm"] for row in run.rows], color=colors[name], lw=1.1, label=name)
    ax_curve.set(xlabel="RL step", ylabel="gradient norm (before clipping)", title=f"Gradient norm, seed {seed}")
    ax_curve.legend()
    for i, name in enumerate(s.estimators):
        e = summary["estimators"][name]
        per_seed = [v["grad_norm_cv"] for v in e["per_seed"].values()]
        ax_cv.bar(i, e["grad_norm_cv"], color=colors[name], alpha=0.6)
        ax_cv.plot([i] * len(per_seed), per_seed, "k.", ms=6)
    ax_cv.set_xticks(range(len(s.estimators)), s.estimators)
    ax_cv.set(ylabel="CV of gradient norm (std / mean)", title=f"Stability, {len(s.seeds)} seeds (lower = steadier)")
    fig.tight_layout()
    gradnorm_path = out / "gradnorm.png"
    fig.savefig(gradnorm_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    window = max(1, s.steps // 10)  # one batch's reward is noisy: each step draws new questions
    for name in s.estimators:
        smoothed = _moving_average(_series(results, name, "reward"), window)
        ax.plot(steps, smoothed.mean(0), color=colors[name], label=name)
    ax.set(
        xlabel="RL step",
        ylabel=f"training reward ({window}-step moving average)",
        title=f"Reward, mean over {len(s.seeds)} seeds (same questions for every estimator)",
    )
    ax.legend()
    fig.tight_layout()
    reward_path = out / "reward.png"
    fig.savefig(reward_path, dpi=110)
    plt.close(fig)
    return [gradnorm_path, reward_path]


def write_outputs(results: list[RunResult], s: Settings, out: Path) -> dict:
    """Write metrics.csv, summary.json and the figures into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(results, out / "metrics.csv", s.task.components)
    summary = summarize(results, s)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, summary, s, out)
    return summary


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
