"""What the probe writes: probe_summary.json, table.md (docs/demo.md's tables) and two figures (``plots``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnpo.demo.results import cpu_name

from .probe import FIT_KEYS, REFERENCE, REGIME_DESCRIPTIONS, REGIMES, ProbeSettings, ratio

MEASURES = ("per_batch_noise", "unbiased_cosine", "grad_norm", "variance", "signal")
SWEEP = ("alpha", "beta", "variance_ratio", "levels_ratio", "predicted_ratio", "flat_ratio", "paper_ratio",
         "signal_ratio", "noise_ratio")
OUTPUTS = ("probe_summary.json", "table.md", "noise.png", "theorem.png")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; inf if any value is inf."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if np.isinf(x).any() or len(finite) == 0:
        return math.inf if np.isinf(x).any() else math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0


def _with_sd(entry: dict, key: str, values: list[float]) -> None:
    entry[key], entry[f"{key}_sd"] = _mean_sd(values)
    entry[f"{key}_per_seed"] = [float(v) for v in values]


def summarize_estimator(points: list[dict], name: str) -> dict[str, Any]:
    """One estimator's numbers over some points (seeds): mean, spread, per seed, and the measures paired with
    REINFORCE on the same batches (which cancels most of what the points differ in)."""
    ours, theirs = [pt["estimators"][name] for pt in points], [pt["estimators"][REFERENCE] for pt in points]
    entry: dict[str, Any] = {"points": len(points)}
    for key in MEASURES:
        _with_sd(entry, key, [e[key] for e in ours])
    ratios = [ratio(e["per_batch_noise"], r["per_batch_noise"]) for e, r in zip(ours, theirs)]
    _with_sd(entry, "noise_ratio", ratios)
    entry["lower_noise_points"] = int(sum(r < 1 for r in ratios))
    _with_sd(entry, "cosine_gain", [e["unbiased_cosine"] - r["unbiased_cosine"] for e, r in zip(ours, theirs)])
    if all("fits" in e for e in ours):
        entry["fits"] = {key: {stat: _mean_sd([e["fits"][key][stat] for e in ours])[0]
                               for stat in ("median", "iqr", "sd")} for key in FIT_KEYS}
    return entry


def summarize_points(points: list[dict], estimators: tuple[str, ...]) -> dict[str, Any]:
    """Everything measured at some points: the fits of p_hat and p, every estimator, the sweep (measured against
    predicted), kappa by level and the limits."""
    points = sorted(points, key=lambda pt: pt["seed"])
    entry: dict[str, Any] = {"seeds": [pt["seed"] for pt in points]}
    for key in ("reward", "mixed_frac", "a", "b"):
        _with_sd(entry, key, [pt[key] for pt in points])
    _with_sd(entry, "n0", [pt["deconvolved"]["n0"] for pt in points])
    _with_sd(entry, "n0_p_hat", [pt["a"] + pt["b"] for pt in points])  # what a fit of p_hat says n0 is
    entry["estimators"] = {name: summarize_estimator(points, name) for name in estimators}
    _with_sd(entry, "baseline_limit", [pt["limits"]["baseline"] for pt in points])
    _with_sd(entry, "reweighting_limit", [pt["limits"]["reweighting"]["ratio"] for pt in points])
    entry["theorem"] = {}
    for key, first in points[0]["theorem"].items():
        entry["theorem"][key] = {"t": first["t"]}
        for name in SWEEP:
            _with_sd(entry["theorem"][key], name, [pt["theorem"][key][name] for pt in points])
    # kappa by level: the questions of every seed together (counts summed, means weighted by count), relative to the
    # overall mean; the best per-question weight, mean over the seeds
    k0 = points[0]["kappa"]
    count = np.array([pt["kappa"]["count"] for pt in points], dtype=np.float64)
    weighted = count * np.nan_to_num(np.array([pt["kappa"]["mean"] for pt in points], dtype=np.float64))
    total = count.sum(axis=0)
    pooled = np.where(total > 0, weighted.sum(axis=0) / np.maximum(total, 1), math.nan)
    relative = np.where(total >= k0["min_count"], pooled / (weighted.sum() / max(total.sum(), 1)), math.nan)
    weights = np.array([pt["limits"]["reweighting"]["weight"] for pt in points], dtype=np.float64)
    best = [float(np.nanmean(column)) if np.isfinite(column).any() else math.nan for column in weights.T]
    entry["kappa"] = {"m": k0["m"], "p_hat": k0["p_hat"], "count": total.astype(int).tolist(),
                      "relative": relative.tolist(), "min_count": k0["min_count"], "best_weight": best}
    return entry


def summarize(points: list[dict], p: ProbeSettings) -> dict[str, Any]:
    """probe_summary.json: per regime and snapshot (over seeds), every point, and the machine the numbers depend on:
    the CPU, the torch build and the kernels torch picked (its float32 sums differ between them: docs/demo.md)."""
    regimes = {regime: {"description": REGIME_DESCRIPTIONS[regime], "overrides": REGIMES[regime], "snapshots": {
        str(step): summarize_points([pt for pt in points if pt["regime"] == regime and pt["step"] == step],
                                    p.estimators) for step in sorted(p.snapshots)}} for regime in p.regimes}
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return {"settings": asdict(p), "machine": machine, "regimes": regimes, "points": points}


def _num(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    """'mean ± sd'; – where there was nothing to measure (no gradient at all, no Beta fit)."""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(mean) and math.isfinite(sd) else _num(mean, digits)


def _per_seed(e: dict, key: str, digits: int = 3) -> str:
    """'mean [seed values]' of a paired measure."""
    return f"{_num(e[key], digits)} [{', '.join(_num(v, digits) for v in e[f'{key}_per_seed'])}]"


def _row(label: Any, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _regime_tables(regime: str, r: dict) -> list[str]:
    """One regime: the fits, the estimators and the limits per snapshot, the fits' spread, the sweep, kappa."""
    snapshots = r["snapshots"]
    first = next(iter(snapshots.values()))
    fits = "; ".join(f"step {step}: a = {_pm(e['a'], e['a_sd'])}, b = {_pm(e['b'], e['b_sd'])} (a + b = "
                     f"{_pm(e['n0_p_hat'], e['n0_p_hat_sd'], 1)}), deconvolved n0 per seed "
                     + ", ".join(_num(n0, 1 if n0 < 10 else 0) for n0 in e["n0_per_seed"])
                     + f", reward {e['reward']:.2f}" for step, e in snapshots.items())
    lines = [f"**{regime}** ({r['description']}). Beta fit of the snapshot's p_hat (mean ± sd over "
             f"{len(first['seeds'])} seeds) and the deconvolved n0 of p: {fits}.", "",
             _row("estimator", [f"step {s}: per-batch noise | ÷ reinforce's [per seed] | Δ cos(E g, ∇J)"
                                for s in snapshots]), "|---|" + "---|---|---|" * len(snapshots)]
    for name in first["estimators"]:  # the estimators, and the limits, per snapshot
        cells = []
        for e in (snapshot["estimators"][name] for snapshot in snapshots.values()):
            own = _pm(e["unbiased_cosine"], e["unbiased_cosine_sd"], 3)
            paired = (["1", f"0 (its own: {own})"] if name == REFERENCE
                      else [_per_seed(e, "noise_ratio"), _pm(e["cosine_gain"], e["cosine_gain_sd"], 3)])
            cells += [_pm(e["per_batch_noise"], e["per_batch_noise_sd"]), *paired]
        lines.append(_row(name, cells))
    for label, key in (("*limit: best reward-only baseline*", "baseline_limit"),
                       ("*limit: best per-question weight*", "reweighting_limit")):
        lines.append(_row(label, [f" | {_per_seed(s, key)} | " for s in snapshots.values()]))
    fitted = [name for name, e in first["estimators"].items() if "fits" in e]  # their spread over the K batches
    if fitted:
        lines += ["", _row("fit: median (IQR over the K batches)", [f"step {s}: a, b | α, β" for s in snapshots]),
                  "|---|" + "---|---|" * len(snapshots)]
    for name in fitted:
        lines.append(_row(name, [", ".join(f"{f[k]['median']:.2f} ({f[k]['iqr']:.{digits}f})" for k in pair)
                                 for f in (snapshot["estimators"][name]["fits"] for snapshot in snapshots.values())
                                 for pair, digits in ((("a", "b"), 2), (("alpha", "beta"), 3))]))
    lines += ["", "| step | t | α, β | variance / t = 0 | predicted from the measured levels and κ "  # Theorem 1
              "| predicted: Beta of p (deconvolved), κ by level | predicted: Beta of p, flat κ | the paper's formula "
              "| ‖E g‖² / t = 0 | per-batch noise / t = 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(f"{step} | {e['t']:g}", [f"{e['alpha']:.2f}, {e['beta']:.2f}",
                                             *(_pm(e[key], e[f"{key}_sd"], 3) for key in SWEEP[2:])])
              for step, snapshot in snapshots.items() for e in snapshot["theorem"].values()]
    lines.append("")
    for step, snapshot in snapshots.items():  # kappa by level, and the best per-question weight
        k = snapshot["kappa"]
        level = [f"{round(p * k['m'])}/{k['m']}" for p in k["p_hat"]]
        kappa = ", ".join(f"{j}: {_num(rel, 2)} (n={n})" for j, rel, n in zip(level, k["relative"], k["count"]))
        weights = ", ".join(f"{j}: {_num(w, 2)}" for j, w in zip(level, k["best_weight"]))
        lines += [f"mean κ(p_hat) / mean κ at step {step} (all seeds' questions; – below n = {k['min_count']}): "
                  f"{kappa}.  ", f"best per-question weight w*(p_hat) / w*(1/2) at step {step} (mean over seeds): "
                  f"{weights}.  "]
    return [*lines, ""]


def format_tables(summary: dict) -> str:
    """The probe's results as markdown: per regime, the estimators and limits, the fits, the sweep, kappa."""
    s, m = summary["settings"], summary["machine"]
    lines = [line for regime, r in summary["regimes"].items() for line in _regime_tables(regime, r)]
    lines.append(
        f"{len(s['seeds'])} seeds; snapshots at steps {list(s['snapshots'])} of a `{s['trainer']}` training run; "
        f"K = {s['batches']} batches per snapshot; ∇J from {s['reference_batches']} REINFORCE batches; the Beta fits "
        f"from {s['fit_batches']} batches. Noise: the unbiased per-batch noise tr Cov / ‖E g‖²; its ratio is paired "
        "(same batches), mean [per seed]. Δ cos: the unbiased cosine of the estimator's mean to ∇J minus REINFORCE's, "
        f"mean ± sd over seeds. Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, {m['cpu_capability']} "
        "kernels.")
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits (the JSON stays small and diffable); inf and nan to null."""
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, (list, tuple)) else value


def write_outputs(points: list[dict], p: ProbeSettings, out: Path) -> dict:
    """Write probe_summary.json, table.md and the figures into ``out``; returns the summary."""
    from .plots import plot

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(points, p)
    (out / "probe_summary.json").write_text(json.dumps(_rounded(summary), indent=1, allow_nan=False) + "\n")
    (out / "table.md").write_text(format_tables(summary) + "\n")
    plot(summary, out)
    return summary
