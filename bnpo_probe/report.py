"""What the probe writes: probe_summary.json, table.md (docs/demo.md's tables) and three figures (``plots``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bnpo.demo.results import cpu_name

from .probe import FIT_KEYS, REFERENCE, REGIME_DESCRIPTIONS, REGIMES, ProbeSettings, _ratio

MEASURES = ("per_batch_noise", "noise", "unbiased_cosine", "cosine", "grad_norm", "variance", "signal")
SWEEP = ("alpha", "beta", "variance_ratio", "levels_ratio", "predicted_ratio", "flat_ratio", "paper_ratio",
         "signal_ratio", "noise_ratio")
OUTPUTS = ("probe_summary.json", "table.md", "noise.png", "fits.png", "theorem.png")


def machine() -> dict[str, object]:
    """What the probe's numbers depend on: the CPU, the torch build and the kernels torch picked for the CPU (its
    float32 sums differ between them: docs/demo.md, "Machines and reproduction")."""
    import torch

    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def machine_line(m: dict[str, object]) -> str:
    """One line naming the machine of ``machine()``'s record, for the tables written beside a summary."""
    return f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, {m['cpu_capability']} kernels."


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; inf if any value is inf."""
    x = np.asarray(values, dtype=np.float64)
    if np.isinf(x).any():
        return math.inf, math.nan
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _with_sd(entry: dict, key: str, values: list[float]) -> None:
    entry[key], entry[f"{key}_sd"] = _mean_sd(values)
    entry[f"{key}_per_seed"] = [float(v) for v in values]


def noise_ratios(points: list[dict], name: str) -> list[float]:
    """Per point: the estimator's per-batch noise over REINFORCE's on the same batches (paired)."""
    return [_ratio(pt["estimators"][name]["per_batch_noise"], pt["estimators"][REFERENCE]["per_batch_noise"])
            for pt in points]


def summarize_estimator(points: list[dict], name: str) -> dict[str, Any]:
    """One estimator's numbers over some points (seeds): mean, spread, per seed, and the measures paired with
    REINFORCE on the same batches (which cancels most of what the points differ in)."""
    entry: dict[str, Any] = {"points": len(points)}
    for key in MEASURES:
        _with_sd(entry, key, [pt["estimators"][name][key] for pt in points])
    ratios = noise_ratios(points, name)
    _with_sd(entry, "noise_ratio", ratios)
    entry["lower_noise_points"] = int(sum(r < 1 for r in ratios))
    _with_sd(entry, "cosine_gain", [pt["estimators"][name]["unbiased_cosine"]
                                    - pt["estimators"][REFERENCE]["unbiased_cosine"] for pt in points])
    if all("fits" in pt["estimators"][name] for pt in points):
        entry["fits"] = {key: {stat: _mean_sd([pt["estimators"][name]["fits"][key][stat] for pt in points])[0]
                               for stat in ("median", "iqr", "sd")} for key in FIT_KEYS}
    return entry


def summarize_theorem(points: list[dict]) -> dict[str, Any]:
    """The fixed-normaliser sweep over the points: measured against predicted variance, signal and noise."""
    out = {}
    for key in points[0]["theorem"]:
        rows = [pt["theorem"][key] for pt in points]
        entry: dict[str, Any] = {"t": rows[0]["t"]}
        for name in SWEEP:
            _with_sd(entry, name, [row[name] for row in rows])
        out[key] = entry
    return out


def summarize_levels(points: list[dict]) -> dict[str, Any]:
    """kappa by level over the points: the questions of every seed together (counts summed, means weighted by
    count), relative to the overall mean; the best per-question weight, mean over the seeds."""
    k0 = points[0]["kappa"]
    count = np.array([pt["kappa"]["count"] for pt in points], dtype=np.float64)
    mean = np.nan_to_num(np.array([pt["kappa"]["mean"] for pt in points], dtype=np.float64))
    total = count.sum(axis=0)
    pooled = np.where(total > 0, (count * mean).sum(axis=0) / np.maximum(total, 1), math.nan)
    overall = (count * mean).sum() / max(total.sum(), 1)
    relative = np.where(total >= k0["min_count"], pooled / overall, math.nan)
    weights = np.array([pt["limits"]["reweighting"]["weight"] for pt in points], dtype=np.float64)
    best = [float(np.nanmean(column)) if np.isfinite(column).any() else math.nan for column in weights.T]
    return {"m": k0["m"], "p_hat": k0["p_hat"], "count": total.astype(int).tolist(), "relative": relative.tolist(),
            "min_count": k0["min_count"], "best_weight": best}


def summarize_points(points: list[dict], estimators: tuple[str, ...]) -> dict[str, Any]:
    """Everything measured at some points: the fits of p_hat and p, every estimator, the sweep, kappa, the limits."""
    points = sorted(points, key=lambda pt: pt["seed"])
    entry: dict[str, Any] = {"seeds": [pt["seed"] for pt in points]}
    for key in ("reward", "mixed_frac", "a", "b"):
        _with_sd(entry, key, [pt[key] for pt in points])
    _with_sd(entry, "n0", [pt["deconvolved"]["n0"] for pt in points])
    _with_sd(entry, "n0_p_hat", [pt["a"] + pt["b"] for pt in points])  # what a fit of p_hat says n0 is
    entry["estimators"] = {name: summarize_estimator(points, name) for name in estimators}
    _with_sd(entry, "baseline_limit", [pt["limits"]["baseline"] for pt in points])
    _with_sd(entry, "reweighting_limit", [pt["limits"]["reweighting"]["ratio"] for pt in points])
    entry["theorem"] = summarize_theorem(points)
    entry["kappa"] = summarize_levels(points)
    return entry


def summarize(points: list[dict], p: ProbeSettings) -> dict[str, Any]:
    """probe_summary.json: per regime and snapshot (over seeds), and every point."""
    regimes = {}
    for regime in p.regimes:
        at = [pt for pt in points if pt["regime"] == regime]
        snapshots = {str(step): summarize_points([pt for pt in at if pt["step"] == step], p.estimators)
                     for step in sorted(p.snapshots)}
        regimes[regime] = {"description": REGIME_DESCRIPTIONS[regime], "overrides": REGIMES[regime],
                           "snapshots": snapshots}
    return {"settings": asdict(p), "machine": machine(), "regimes": regimes, "points": points}


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"  # nothing to measure: e.g. no gradient at all, or no Beta fit
    if not math.isfinite(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def _per_seed(e: dict, key: str, digits: int = 3) -> str:
    """'mean [seed values]' of a paired measure."""
    values = ", ".join("–" if math.isnan(v) else "inf" if math.isinf(v) else f"{v:.{digits}f}"
                       for v in e[f"{key}_per_seed"])
    return f"{_pm(e[key], 0.0, digits).split(' ')[0]} [{values}]"


def _estimator_table(snapshots: dict) -> list[str]:
    steps = list(snapshots)
    header = " | ".join(f"step {s}: per-batch noise | ÷ reinforce's [per seed] | Δ cos(E g, ∇J)" for s in steps)
    lines = [f"| estimator | {header} |", "|---|" + "---|---|---|" * len(steps)]
    for name in next(iter(snapshots.values()))["estimators"]:
        cells = []
        for snapshot in snapshots.values():
            e = snapshot["estimators"][name]
            if name == REFERENCE:
                cells += [_pm(e["per_batch_noise"], e["per_batch_noise_sd"]), "1",
                          f"0 (its own: {_pm(e['unbiased_cosine'], e['unbiased_cosine_sd'], 3)})"]
            else:
                cells += [_pm(e["per_batch_noise"], e["per_batch_noise_sd"]), _per_seed(e, "noise_ratio"),
                          _pm(e["cosine_gain"], e["cosine_gain_sd"], 3)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("limit: best reward-only baseline", "baseline_limit"),
                       ("limit: best per-question weight", "reweighting_limit")):
        cells = []
        for snapshot in snapshots.values():
            cells += ["", _per_seed(snapshot, key), ""]
        lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
    return lines


def _fit_table(snapshots: dict) -> list[str]:
    first = next(iter(snapshots.values()))["estimators"]
    fitted = [name for name, e in first.items() if "fits" in e]
    if not fitted:
        return []
    header = " | ".join(f"step {step}: a, b | α, β" for step in snapshots)
    lines = ["", f"| fit: median (IQR over the K batches) | {header} |", "|---|" + "---|---|" * len(snapshots)]
    for name in fitted:
        cells = []
        for snapshot in snapshots.values():
            f = snapshot["estimators"][name]["fits"]

            def cell(x: str, y: str, digits: int) -> str:
                return f"{f[x]['median']:.2f} ({f[x]['iqr']:.{digits}f}), {f[y]['median']:.2f} ({f[y]['iqr']:.{digits}f})"

            cells += [cell("a", "b", 2), cell("alpha", "beta", 3)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _sweep_table(snapshots: dict) -> list[str]:
    lines = ["", "| step | t | α, β | variance / t = 0 | predicted from the measured levels and κ "
             "| predicted: Beta of p (deconvolved), κ by level | predicted: Beta of p, flat κ | the paper's formula "
             "| ‖E g‖² / t = 0 | per-batch noise / t = 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for step, snapshot in snapshots.items():
        for e in snapshot["theorem"].values():
            cells = [f"{e['alpha']:.2f}, {e['beta']:.2f}"]
            cells += [_pm(e[key], e[f"{key}_sd"], 3) for key in SWEEP[2:]]
            lines.append(f"| {step} | {e['t']:g} | " + " | ".join(cells) + " |")
    return lines


def _level_lines(snapshots: dict) -> list[str]:
    lines = [""]
    for step, snapshot in snapshots.items():
        k = snapshot["kappa"]
        levels = ", ".join(f"{round(p * k['m'])}/{k['m']}: {'–' if math.isnan(rel) else f'{rel:.2f}'} (n={count})"
                           for p, rel, count in zip(k["p_hat"], k["relative"], k["count"]))
        weights = ", ".join(f"{round(p * k['m'])}/{k['m']}: {'–' if math.isnan(w) else f'{w:.2f}'}"
                            for p, w in zip(k["p_hat"], k["best_weight"]))
        lines.append(f"mean κ(p_hat) / mean κ at step {step} (all seeds' questions; – below n = {k['min_count']}): "
                     f"{levels}.  ")
        lines.append(f"best per-question weight w*(p_hat) / w*(1/2) at step {step} (mean over seeds): {weights}.  ")
    return lines


def _n0(n0: float) -> str:
    return "–" if math.isnan(n0) else "inf" if math.isinf(n0) else f"{n0:.1f}" if n0 < 10 else f"{n0:.0f}"


def _regime_tables(regime: str, r: dict) -> list[str]:
    """One regime: the estimators and the limits per snapshot, the fits' spread, the sweep, kappa by level."""
    snapshots = r["snapshots"]
    seeds = len(next(iter(snapshots.values()))["seeds"])
    fits = "; ".join(f"step {step}: a = {_pm(e['a'], e['a_sd'])}, b = {_pm(e['b'], e['b_sd'])} (a + b = "
                     f"{_pm(e['n0_p_hat'], e['n0_p_hat_sd'], 1)}), deconvolved n0 per seed "
                     + ", ".join(_n0(n0) for n0 in e["n0_per_seed"]) + f", reward {e['reward']:.2f}"
                     for step, e in snapshots.items())
    lines = [f"**{regime}** ({r['description']}). Beta fit of the snapshot's p_hat (mean ± sd over {seeds} seeds) "
             f"and the deconvolved n0 of p: {fits}.", ""]
    return [*lines, *_estimator_table(snapshots), *_fit_table(snapshots), *_sweep_table(snapshots),
            *_level_lines(snapshots), ""]


def format_tables(summary: dict) -> str:
    """The probe's results as markdown: per regime, the estimators and limits, the fits, the sweep, kappa."""
    settings = summary["settings"]
    lines = []
    for regime, r in summary["regimes"].items():
        lines += _regime_tables(regime, r)
    lines.append(
        f"{len(settings['seeds'])} seeds; snapshots at steps {list(settings['snapshots'])} of a `{settings['trainer']}` "
        f"training run; K = {settings['batches']} batches per snapshot; ∇J from {settings['reference_batches']} "
        f"REINFORCE batches; the Beta fits and the pooled fit's warm-up from {settings['pool_warmup_batches']} "
        "batches. Noise: the unbiased per-batch noise tr Cov / ‖E g‖²; its ratio is paired (same batches), mean "
        "[per seed]. Δ cos: the unbiased cosine of the estimator's mean to ∇J minus REINFORCE's, mean ± sd over seeds. "
        + machine_line(summary["machine"])
    )
    return "\n".join(lines)


def write_outputs(points: list[dict], p: ProbeSettings, out: Path) -> dict:
    """Write probe_summary.json, table.md and the figures into ``out``; returns the summary."""
    from .plots import plot

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
