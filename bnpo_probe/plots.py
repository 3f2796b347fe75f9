"""The probe's figures: noise.png (noise and bias per estimator, with the limits) and theorem.png (the sweep against
the predictions, and kappa by level). They read the JSON-ready summary: an inf or nan there may be None."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .probe import REFERENCE, ratio


def _array(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _finish(ax: Any, values: list[float], log: bool = True) -> None:
    """A log y-axis when something positive and finite was drawn (a run without any signal draws nothing)."""
    x = _array(values)
    if log and (np.isfinite(x) & (x > 0)).any():
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def _noise_figure(summary: dict, plt: Any) -> Any:
    regimes, estimators = list(summary["regimes"]), summary["settings"]["estimators"]
    steps = sorted(summary["settings"]["snapshots"])
    fig, axes = plt.subplots(2, len(regimes), figsize=(7 * len(regimes), 8), squeeze=False)
    for col, regime in enumerate(regimes):
        noise, bias = axes[0][col], axes[1][col]
        for j, step in enumerate(steps):
            at = [pt["estimators"] for pt in summary["points"] if pt["regime"] == regime and pt["step"] == step]
            for i, name in enumerate(estimators):  # a marker per seed, a bar per mean; paired with REINFORCE
                x = i + (j - (len(steps) - 1) / 2) * 0.35
                paired = _array([ratio(e[name]["per_batch_noise"], e[REFERENCE]["per_batch_noise"]) for e in at])
                shift = (_array([e[name]["unbiased_cosine"] for e in at])
                         - _array([e[REFERENCE]["unbiased_cosine"] for e in at]))
                for ax, values in ((noise, paired), (bias, shift)):
                    ax.plot([x] * len(values), values, "o^sDv*"[j], color=f"C{i}", ms=5, alpha=0.7,
                            label=f"step {step}" if i == 0 else None, mfc="none" if j else f"C{i}")
                    if np.isfinite(values).any():
                        ax.plot([x - 0.15, x + 0.15], [np.nanmean(values)] * 2, color=f"C{i}", lw=2.5)
            snapshot = summary["regimes"][regime]["snapshots"][str(step)]
            for limit, style in (("baseline_limit", "--"), ("reweighting_limit", ":")):
                if snapshot[limit] is not None and np.isfinite(snapshot[limit]):
                    noise.axhline(snapshot[limit], color=f"C{7 + j}", lw=1, ls=style,
                                  label=f"step {step}: {limit.replace('_', ' ')}")
        noise.set(ylabel="per-batch noise / reinforce's (same batches)",
                  title=f"{regime}: noise (lower is better; lines: the limits)")
        bias.set(ylabel="cos(E g, ∇J) - reinforce's (unbiased)", title=f"{regime}: bias of the direction (0: none)")
        for ax, level in ((noise, 1.0), (bias, 0.0)):
            ax.axhline(level, color="gray", lw=0.8)
            ax.set_xticks(range(len(estimators)), estimators, rotation=25, fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("Gradient noise at fixed policies: a marker per seed, a bar per mean, left to right by snapshot")
    return fig


def _theorem_figure(summary: dict, plt: Any) -> Any:
    regimes, steps = list(summary["regimes"]), sorted(summary["settings"]["snapshots"])
    curves = (("variance_ratio", "measured variance", "o-"),
              ("levels_ratio", "predicted: measured levels and κ", "d--"),
              ("predicted_ratio", "predicted: Beta of p, κ by level", "s--"),
              ("paper_ratio", "the paper's formula", "x:"), ("noise_ratio", "measured per-batch noise", "^-"))
    fig, axes = plt.subplots(len(regimes), len(steps) + 1, figsize=(5 * (len(steps) + 1), 4 * len(regimes)),
                             squeeze=False)
    for row, regime in enumerate(regimes):
        snapshots = summary["regimes"][regime]["snapshots"]
        for col, step in enumerate(steps):
            ax, snapshot = axes[row][col], snapshots[str(step)]
            sweep = list(snapshot["theorem"].values())
            t = np.array([e["t"] for e in sweep])
            drawn = []
            for key, label, style in curves:
                mean, sd = _array([e[key] for e in sweep]), np.nan_to_num(_array([e[f"{key}_sd"] for e in sweep]))
                finite = np.isfinite(mean)
                ax.errorbar(t[finite], mean[finite], yerr=sd[finite], fmt=style, capsize=2, label=label)
                drawn.extend(mean[finite])
            ax.axvline(1.0, color="gray", lw=0.8, ls=":")
            ax.set(xlabel="t: (α, β) = (1 + t a/3, 1 + t b/3); t = 1 is Theorem 1's",
                   ylabel="relative to t = 0 (REINFORCE)",
                   title=f"{regime}, step {step}: a = {snapshot['a']:.2f}, b = {snapshot['b']:.2f}")
            _finish(ax, drawn)
        ax, drawn = axes[row][-1], []
        for j, step in enumerate(steps):
            k = snapshots[str(step)]["kappa"]
            ax.plot(k["p_hat"], _array(k["relative"]), "o^sDv*"[j] + "-", label=f"step {step}")
            drawn.extend(_array(k["relative"]))
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set(xlabel="p_hat of the question", ylabel="mean κ at the level / mean κ",
               title=f"{regime}: Theorem 1 assumes a flat κ(p_hat)")
        _finish(ax, drawn)
    return fig


def plot(summary: dict, out: Path) -> None:
    """noise.png and theorem.png from the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for figure, name, dpi in ((_noise_figure, "noise.png", 95), (_theorem_figure, "theorem.png", 85)):
        fig = figure(summary, plt)
        fig.tight_layout()
        fig.savefig(out / name, dpi=dpi)
        plt.close(fig)
