"""What the probe writes: probe_summary.json, table.md (the README's tables) and three figures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .probe import FIT_KEYS, REFERENCE, REGIME_DESCRIPTIONS, REGIMES, ProbeSettings

MEASURES = ("noise", "per_batch_noise", "cosine", "mean_cosine", "grad_norm", "variance", "signal")
OUTPUTS = ("probe_summary.json", "table.md", "noise.png", "fits.png", "theorem.png")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); inf if any value is inf."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if np.isinf(x).any():
        return math.inf, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def _with_sd(entry: dict, key: str, values: list[float]) -> None:
    entry[key], entry[f"{key}_sd"] = _mean_sd(values)


def summarize_estimator(points: list[dict], name: str) -> dict[str, Any]:
    """One estimator's numbers over some points (seeds, snapshots): mean, spread, and the ratio paired with
    REINFORCE on the same batches (which cancels most of what the points differ in)."""
    entry: dict[str, Any] = {"points": len(points)}
    for key in MEASURES:
        _with_sd(entry, key, [pt["estimators"][name][key] for pt in points])
    ratios = [_ratio(pt["estimators"][name]["noise"], pt["estimators"][REFERENCE]["noise"]) for pt in points]
    _with_sd(entry, "noise_ratio", ratios)
    entry["lower_noise_points"] = int(sum(r < 1 for r in ratios))
    if all("fits" in pt["estimators"][name] for pt in points):
        entry["fits"] = {
            key: {stat: _mean_sd([pt["estimators"][name]["fits"][key][stat] for pt in points])[0]
                  for stat in ("median", "iqr", "sd")}
            for key in FIT_KEYS
        }
    return entry


def summarize_theorem(points: list[dict]) -> dict[str, Any]:
    """The fixed-normaliser sweep (1 + t a/3, 1 + t b/3) over the points: measured vs predicted variance."""
    out = {}
    for key in points[0]["theorem"]:
        rows = [pt["theorem"][key] for pt in points]
        entry: dict[str, Any] = {"t": rows[0]["t"]}
        for name in ("alpha", "beta", "variance_ratio", "predicted_ratio", "signal_ratio", "cosine"):
            _with_sd(entry, name, [row[name] for row in rows])
        noise = [_ratio(row["noise"], pt["theorem"]["t=0"]["noise"]) for row, pt in zip(rows, points)]
        _with_sd(entry, "noise_ratio", noise)
        out[key] = entry
    return out


def summarize_kappa(points: list[dict]) -> dict[str, Any]:
    """kappa(p_hat) / the point's median, as the median over points; and how many questions each level had."""
    levels = points[0]["kappa"]["p_hat"]
    relative = np.array([pt["kappa"]["relative"] for pt in points], dtype=np.float64)
    counts = np.array([pt["kappa"]["count"] for pt in points]).sum(axis=0)
    medians = [float(np.nanmedian(column)) if np.isfinite(column).any() else math.nan for column in relative.T]
    return {"m": points[0]["kappa"]["m"], "p_hat": levels, "count": counts.tolist(), "relative": medians}


def summarize_points(points: list[dict], estimators: tuple[str, ...]) -> dict[str, Any]:
    """Everything measured at some points: the Beta fit of p_hat, every estimator, the theorem sweep, kappa."""
    entry: dict[str, Any] = {}
    for key in ("reward", "mixed_frac", "a", "b"):
        _with_sd(entry, key, [pt[key] for pt in points])
    entry["estimators"] = {name: summarize_estimator(points, name) for name in estimators}
    entry["theorem"] = summarize_theorem(points)
    entry["kappa"] = summarize_kappa(points)
    return entry


def summarize(points: list[dict], p: ProbeSettings) -> dict[str, Any]:
    """probe_summary.json: per regime, over all its points and per snapshot (over seeds); and every point."""
    regimes = {}
    for regime in p.regimes:
        at = [pt for pt in points if pt["regime"] == regime]
        regimes[regime] = {
            "description": REGIME_DESCRIPTIONS[regime],
            "overrides": REGIMES[regime],
            "all": summarize_points(at, p.estimators),
            "snapshots": {
                str(step): summarize_points([pt for pt in at if pt["step"] == step], p.estimators)
                for step in sorted(p.snapshots)
            },
        }
    return {"settings": asdict(p), "regimes": regimes, "points": points}


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"  # nothing to measure: e.g. no gradient at all, or no Beta fit
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(mean) else "inf"


def _regime_tables(regime: str, r: dict) -> list[str]:
    """One regime: the estimators per snapshot, the fits' spread, the Theorem 1 sweep and kappa(p_hat)."""
    snapshots = r["snapshots"]
    seeds = next(iter(next(iter(snapshots.values()))["estimators"].values()))["points"]
    fits = "; ".join(
        f"step {step}: a = {_pm(e['a'], e['a_sd'])}, b = {_pm(e['b'], e['b_sd'])}, reward {e['reward']:.2f}"
        for step, e in snapshots.items()
    )
    header = " | ".join(f"step {step}: noise | ÷ reinforce's (lower at) | cos(g_k, ∇J)" for step in snapshots)
    lines = [
        f"**{regime}** ({r['description']}). Beta fit of the snapshot's p_hat (mean ± sd over {seeds} seeds): {fits}.",
        "",
        f"| estimator | {header} |",
        "|---|" + "---|---|---|" * len(snapshots),
    ]
    for name in r["all"]["estimators"]:
        cells = []
        for e in (snapshot["estimators"][name] for snapshot in snapshots.values()):
            paired = "1" if name == REFERENCE else \
                f"{_pm(e['noise_ratio'], e['noise_ratio_sd'], 3)} ({e['lower_noise_points']}/{e['points']})"
            cells += [_pm(e["noise"], e["noise_sd"]), paired, _pm(e["cosine"], e["cosine_sd"], 3)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fitted = [name for name, e in r["all"]["estimators"].items() if "fits" in e]
    if fitted:
        header = " | ".join(f"step {step}: a, b | α, β" for step in snapshots)
        lines += ["", f"| fit: median (IQR over the K batches) | {header} |", "|---|" + "---|---|" * len(snapshots)]
        for name in fitted:
            cells = []
            for snapshot in snapshots.values():
                f = snapshot["estimators"][name]["fits"]

                def cell(x: str, y: str, digits: int) -> str:
                    return f"{f[x]['median']:.2f} ({f[x]['iqr']:.{digits}f}), {f[y]['median']:.2f} ({f[y]['iqr']:.{digits}f})"

                cells += [cell("a", "b", 2), cell("alpha", "beta", 3)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    header = " | ".join(
        f"step {step}: α, β | variance / t = 0 | Theorem 1's prediction | ‖mean g‖² / t = 0 | noise / t = 0"
        for step in snapshots
    )
    lines += ["", f"| t | {header} |", "|---|" + "---|---|---|---|---|" * len(snapshots)]
    for key in r["all"]["theorem"]:
        cells = []
        for snapshot in snapshots.values():
            e = snapshot["theorem"][key]
            cells += [
                f"{e['alpha']:.2f}, {e['beta']:.2f}",
                _pm(e["variance_ratio"], e["variance_ratio_sd"], 3),
                _pm(e["predicted_ratio"], e["predicted_ratio_sd"], 3),
                _pm(e["signal_ratio"], e["signal_ratio_sd"], 3),
                _pm(e["noise_ratio"], e["noise_ratio_sd"], 3),
            ]
        lines.append(f"| {snapshots[next(iter(snapshots))]['theorem'][key]['t']:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for step, snapshot in snapshots.items():
        k = snapshot["kappa"]
        levels = ", ".join(
            f"{round(p_hat * k['m'])}/{k['m']}: {_pm(rel, 0.0).split(' ')[0]} (n={count})"
            for p_hat, rel, count in zip(k["p_hat"], k["relative"], k["count"])
        )
        lines.append(f"κ(p_hat) / median κ at step {step}: {levels}.  ")
    return lines + [""]


def format_tables(summary: dict) -> str:
    """The probe's results as markdown: per regime and snapshot, the estimators, the fits, Theorem 1's sweep, kappa."""
    settings = summary["settings"]
    lines = []
    for regime, r in summary["regimes"].items():
        lines += _regime_tables(regime, r)
    lines.append(
        f"{len(settings['seeds'])} seeds; snapshots at steps {list(settings['snapshots'])} of a `{settings['trainer']}` "
        f"training run; K = {settings['batches']} batches per snapshot; ∇J from {settings['reference_batches']} "
        f"REINFORCE batches; the pooled fit warmed with {settings['pool_warmup_batches']} batches. Mean ± sd over seeds; "
        "noise ratios are paired (same batches), with the number of seeds at which the estimator is less noisy."
    )
    return "\n".join(lines)


def _points_of(summary: dict, regime: str) -> list[dict]:
    return [pt for pt in summary["points"] if pt["regime"] == regime]


def plot(summary: dict, out: Path) -> list[Path]:
    """noise.png (noise and cosine per estimator), fits.png (the fits across batches), theorem.png (the sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary["regimes"])
    estimators = summary["settings"]["estimators"]
    steps = sorted(summary["settings"]["snapshots"])
    colors = {name: f"C{i}" for i, name in enumerate(estimators)}
    markers = dict(zip(steps, "o^sDv*"))

    fig, axes = plt.subplots(2, len(regimes), figsize=(6.5 * len(regimes), 7.5), squeeze=False)
    panels = (("noise", "noise / reinforce's noise (same batches)", "lower"),
              ("cosine", "cos(g_k, ∇J) - reinforce's (same batches)", "higher"))
    for col, regime in enumerate(regimes):
        for row, (key, label, better) in enumerate(panels):
            ax = axes[row][col]
            for i, name in enumerate(estimators):
                for j, step in enumerate(steps):
                    at = [pt for pt in _points_of(summary, regime) if pt["step"] == step]
                    values = [pt["estimators"][name][key] for pt in at]
                    reference = [pt["estimators"][REFERENCE][key] for pt in at]
                    if key == "noise":
                        values = [_ratio(v, r) for v, r in zip(values, reference)]
                    else:
                        values = [v - r for v, r in zip(values, reference)]
                    x = i + (j - (len(steps) - 1) / 2) * 0.35
                    ax.plot([x] * len(values), values, markers[step], color=colors[name], ms=5, alpha=0.7,
                            label=f"step {step}" if i == 0 else None, mfc="none" if j else colors[name])
                    ax.plot([x - 0.15, x + 0.15], [np.nanmean(values)] * 2, color=colors[name], lw=2.5)
            ax.axhline(1.0 if key == "noise" else 0.0, color="gray", lw=0.8, ls=":")
            ax.set_xticks(range(len(estimators)), estimators, rotation=20)
            ax.set(ylabel=label, title=f"{regime}: {key} ({better} is better)")
            ax.legend(fontsize=8)
    fig.suptitle("Gradient noise at fixed policies: a marker per seed, a bar per mean, left to right by snapshot step")
    fig.tight_layout()
    noise_path = out / "noise.png"
    fig.savefig(noise_path, dpi=100)
    plt.close(fig)

    fitted = [name for name in estimators if "fits" in summary["regimes"][regimes[0]]["all"]["estimators"][name]]
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
            axes[row][0].legend(fontsize=8)
    fig.suptitle("BNPO's fitted Beta(a, b) and normaliser (α, β) at each seed@step: median ± IQR/2 over the K batches")
    fig.tight_layout()
    fits_path = out / "fits.png"
    fig.savefig(fits_path, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(regimes), len(steps) + 1, figsize=(5 * (len(steps) + 1), 4 * len(regimes)), squeeze=False)
    curves = (("variance_ratio", "measured variance", "o-"), ("predicted_ratio", "Theorem 1's variance", "s--"),
              ("signal_ratio", "measured ||mean g||²", "d-"), ("noise_ratio", "measured noise", "^-"))
    for row, regime in enumerate(regimes):
        for col, step in enumerate(steps):
            ax = axes[row][col]
            snapshot = summary["regimes"][regime]["snapshots"][str(step)]
            sweep = list(snapshot["theorem"].values())
            t = np.array([e["t"] for e in sweep])
            plotted = []
            for key, label, style in curves:
                mean = np.array([e[key] for e in sweep], dtype=np.float64)
                sd = np.nan_to_num(np.array([e[f"{key}_sd"] for e in sweep], dtype=np.float64))
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
            ax.plot(k["p_hat"], k["relative"], markers[step] + "-", label=f"step {step}")
            plotted.extend(k["relative"])
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        _log_scale_if_positive(ax, plotted)
        ax.set(xlabel="p_hat of the question", ylabel="κ / median κ (median over seeds)",
               title=f"{regime}: Theorem 1 assumes a flat κ(p_hat)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    theorem_path = out / "theorem.png"
    fig.savefig(theorem_path, dpi=85)
    plt.close(fig)
    return [noise_path, fits_path, theorem_path]


def _log_scale_if_positive(ax: Any, values: list[float]) -> None:
    """A log y-axis when something positive and finite was drawn (a run without any signal draws nothing)."""
    x = np.asarray(values, dtype=np.float64)
    if (np.isfinite(x) & (x > 0)).any():
        ax.set_yscale("log")


def write_outputs(points: list[dict], p: ProbeSettings, out: Path) -> dict:
    """Write probe_summary.json, table.md and the figures into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(points, p)
    (out / "probe_summary.json").write_text(json.dumps(_rounded(summary), indent=1, allow_nan=False) + "\n")
    (out / "table.md").write_text(format_tables(summary) + "\n")
    plot(summary, out)
    return summary


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits (the JSON stays small and diffable); inf and nan to null."""
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value
