"""The probe's figures: noise.png (noise and bias per estimator, with the limits), fits.png (the fits across
batches) and theorem.png (the sweep against both predictions, and kappa by level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .probe import FIT_KEYS, REFERENCE


def _points_of(summary: dict, regime: str) -> list[dict]:
    return [pt for pt in summary["points"] if pt["regime"] == regime]


def _ratio(value: Any, reference: Any) -> float:
    if value is None or reference is None or not 0 < reference < np.inf:
        return np.nan
    return value / reference


def _save(fig: Any, plt: Any, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _log_scale_if_positive(ax: Any, values: list[float]) -> None:
    """A log y-axis when something positive and finite was drawn (a run without any signal draws nothing)."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    if (np.isfinite(x) & (x > 0)).any():
        ax.set_yscale("log")


def _noise_figure(summary: dict, plt: Any, out: Path) -> Path:
    regimes = list(summary["regimes"])
    estimators = summary["settings"]["estimators"]
    steps = sorted(summary["settings"]["snapshots"])
    colors = {name: f"C{i}" for i, name in enumerate(estimators)}
    markers = dict(zip(steps, "o^sDv*"))
    fig, axes = plt.subplots(2, len(regimes), figsize=(7 * len(regimes), 8), squeeze=False)
    for col, regime in enumerate(regimes):
        points = _points_of(summary, regime)
        for row, key in enumerate(("per_batch_noise", "unbiased_cosine")):
            ax = axes[row][col]
            for i, name in enumerate(estimators):
                for j, step in enumerate(steps):
                    at = [pt for pt in points if pt["step"] == step]
                    if key == "per_batch_noise":
                        values = [_ratio(pt["estimators"][name][key], pt["estimators"][REFERENCE][key]) for pt in at]
                    else:
                        values = [np.nan if pt["estimators"][name][key] is None or pt["estimators"][REFERENCE][key]
                                  is None else pt["estimators"][name][key] - pt["estimators"][REFERENCE][key]
                                  for pt in at]
                    x = i + (j - (len(steps) - 1) / 2) * 0.35
                    ax.plot([x] * len(values), values, markers[step], color=colors[name], ms=5, alpha=0.7,
                            label=f"step {step}" if i == 0 else None, mfc="none" if j else colors[name])
                    if np.isfinite(values).any():
                        ax.plot([x - 0.15, x + 0.15], [np.nanmean(values)] * 2, color=colors[name], lw=2.5)
            if key == "per_batch_noise":
                for j, step in enumerate(steps):
                    snapshot = summary["regimes"][regime]["snapshots"][str(step)]
                    for limit, style in (("baseline_limit", "--"), ("reweighting_limit", ":")):
                        if snapshot[limit] is not None and np.isfinite(snapshot[limit]):
                            ax.axhline(snapshot[limit], color=f"C{7 + j}", lw=1, ls=style,
                                       label=f"step {step}: {limit.replace('_', ' ')}")
                ax.set(ylabel="per-batch noise / reinforce's (same batches)",
                       title=f"{regime}: noise (lower is better; lines: the limits)")
            else:
                ax.set(ylabel="cos(E g, ∇J) - reinforce's (unbiased)",
                       title=f"{regime}: bias of the direction (0: none)")
            ax.axhline(1.0 if key == "per_batch_noise" else 0.0, color="gray", lw=0.8)
            ax.set_xticks(range(len(estimators)), estimators, rotation=25, fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("Gradient noise at fixed policies: a marker per seed, a bar per mean, left to right by snapshot")
    return _save(fig, plt, out / "noise.png", 95)


def _fits_figure(summary: dict, plt: Any, out: Path) -> Path:
    regimes = list(summary["regimes"])
    estimators = summary["settings"]["estimators"]
    colors = {name: f"C{i}" for i, name in enumerate(estimators)}
    first = _points_of(summary, regimes[0])[0]["estimators"]
    fitted = [name for name in estimators if "fits" in first[name]]
    fig, axes = plt.subplots(len(regimes), len(FIT_KEYS), figsize=(16, 3.6 * len(regimes)), squeeze=False)
    for row, regime in enumerate(regimes):
        points = _points_of(summary, regime)
        for col, key in enumerate(FIT_KEYS):
            ax = axes[row][col]
            for j, name in enumerate(fitted):
                x = np.arange(len(points)) + (j - (len(fitted) - 1) / 2) * 0.8 / len(fitted)
                spread = [pt["estimators"][name]["fits"][key] for pt in points]
                median = np.array([s["median"] for s in spread])
                iqr = np.array([s["iqr"] for s in spread])
                ax.errorbar(x, median, yerr=iqr / 2, fmt="o", color=colors[name], ms=4, capsize=2,
                            label=name if col == 0 else None)
            ax.set_xticks(range(len(points)), [f"s{pt['seed']}@{pt['step']}" for pt in points], fontsize=7)
            ax.set(title=f"{regime}: {key}")
        if fitted:
            axes[row][0].legend(fontsize=7)
    fig.suptitle("BNPO's fitted Beta(a, b) and normaliser (α, β) at each seed@step: median ± IQR/2 over the K batches")
    return _save(fig, plt, out / "fits.png", 95)


def _theorem_figure(summary: dict, plt: Any, out: Path) -> Path:
    regimes = list(summary["regimes"])
    steps = sorted(summary["settings"]["snapshots"])
    markers = dict(zip(steps, "o^sDv*"))
    curves = (("variance_ratio", "measured variance", "o-"),
              ("levels_ratio", "predicted: measured levels and κ", "d--"),
              ("predicted_ratio", "predicted: Beta of p, κ by level", "s--"),
              ("paper_ratio", "the paper's formula", "x:"),
              ("noise_ratio", "measured per-batch noise", "^-"))
    fig, axes = plt.subplots(len(regimes), len(steps) + 1, figsize=(5 * (len(steps) + 1), 4 * len(regimes)),
                             squeeze=False)
    for row, regime in enumerate(regimes):
        for col, step in enumerate(steps):
            ax = axes[row][col]
            snapshot = summary["regimes"][regime]["snapshots"][str(step)]
            sweep = list(snapshot["theorem"].values())
            t = np.array([e["t"] for e in sweep])
            plotted = []
            for key, label, style in curves:
                mean = np.array([np.nan if e[key] is None else e[key] for e in sweep], dtype=np.float64)
                sd = np.nan_to_num(np.array([np.nan if e[f"{key}_sd"] is None else e[f"{key}_sd"] for e in sweep],
                                            dtype=np.float64))
                finite = np.isfinite(mean)
                ax.errorbar(t[finite], mean[finite], yerr=sd[finite], fmt=style, capsize=2, label=label)
                plotted.extend(mean[finite])
            ax.axvline(1.0, color="gray", lw=0.8, ls=":")
            _log_scale_if_positive(ax, plotted)
            ax.set(xlabel="t: (α, β) = (1 + t a/3, 1 + t b/3); t = 1 is Theorem 1's",
                   ylabel="relative to t = 0 (REINFORCE)",
                   title=f"{regime}, step {step}: a = {snapshot['a']:.2f}, b = {snapshot['b']:.2f}")
            ax.legend(fontsize=7)
        ax = axes[row][-1]
        plotted = []
        for step in steps:
            k = summary["regimes"][regime]["snapshots"][str(step)]["kappa"]
            relative = [np.nan if v is None else v for v in k["relative"]]
            ax.plot(k["p_hat"], relative, markers[step] + "-", label=f"step {step}")
            plotted.extend(relative)
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        _log_scale_if_positive(ax, plotted)
        ax.set(xlabel="p_hat of the question", ylabel="mean κ at the level / mean κ",
               title=f"{regime}: Theorem 1 assumes a flat κ(p_hat)")
        ax.legend(fontsize=8)
    return _save(fig, plt, out / "theorem.png", 85)


def plot(summary: dict, out: Path) -> list[Path]:
    """noise.png, fits.png and theorem.png from the summary (JSON-ready: inf and nan may be None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [_noise_figure(summary, plt, out), _fits_figure(summary, plt, out), _theorem_figure(summary, plt, out)]
