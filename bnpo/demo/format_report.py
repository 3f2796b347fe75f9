"""What ``python -m bnpo.demo format`` writes besides the demo's outputs: format.png (held-out accuracy and format
rate over the run, per estimator and seed) and its table (markdown)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .experiment import RunResult, Settings
from .portable import machine_line


def _pm(e: dict, key: str) -> str:
    return f"{e[key]:.3f} ± {e[f'{key}_sd']:.3f}"


def late_accuracy(evals: list[dict]) -> float:
    """The mean held-out accuracy over the evaluations of the run's second half (steps >= half the last step):
    steadier than the last evaluation alone."""
    last = evals[-1]["step"]
    return float(np.mean([e["acc"] for e in evals if e["step"] >= last / 2]))


def format_table(summary: dict) -> str:
    """Per estimator, mean ± sd over seeds: held-out accuracy and format rate at the start and the end, the
    accuracy over the second half, the summed reward, and the pre-clip gradient norm's CV."""
    lines = [
        "| estimator | held-out acc, start → end | acc per seed, end | acc, 2nd half (per seed) "
        "| format rate, start → end | reward (acc + format), end | grad-norm CV |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["estimators"].items():
        per_seed = ", ".join(f"{v['final_acc']:.3f}" for v in e["per_seed"].values())
        late = [late_accuracy(evals) for evals in e["evals"].values()]
        lines.append(
            f"| {name} | {e['initial_acc']:.3f} → {_pm(e, 'final_acc')} | {per_seed} | {np.mean(late):.3f} "
            f"({', '.join(f'{v:.3f}' for v in late)}) | {e['initial_format']:.3f} → {_pm(e, 'final_format')} "
            f"| {_pm(e, 'final_reward')} | {_pm(e, 'grad_norm_cv')} |"
        )
    return "\n".join(lines)


def paired_differences(summary: dict, measure: Callable[[dict, str], float], against: str) -> dict[str, list[float]]:
    """Per estimator, the per-seed difference of ``measure(estimator's summary, seed)`` to estimator ``against``
    (the same seed: the same start, questions and sampler)."""
    estimators = summary["estimators"]
    seeds = list(estimators[against]["per_seed"])
    return {name: [measure(e, seed) - measure(estimators[against], seed) for seed in seeds]
            for name, e in estimators.items() if name != against}


def plot_format(results: list[RunResult], s: Settings, out: Path) -> Path:
    """format.png: held-out accuracy and format rate against the RL step; thin lines per seed, bold the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, name in enumerate(s.estimators):
        runs = [r for r in results if r.estimator == name]
        steps = np.array([e["step"] for e in runs[0].evals])
        for ax, key in zip(axes, ("acc", "format")):
            values = np.array([[e[key] for e in r.evals] for r in runs])
            for row in values:
                ax.plot(steps, row, color=f"C{i}", lw=0.6, alpha=0.4)
            ax.plot(steps, values.mean(0), color=f"C{i}", lw=2.2, marker="o", ms=3, label=name)
    for ax, key in zip(axes, ("held-out accuracy", "held-out format rate")):
        ax.set(xlabel="RL step", ylabel=key, title=f"{key}: {len(s.seeds)} seeds (thin), mean (bold)")
        ax.legend()
    fig.tight_layout()
    path = out / "format.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_format_outputs(results: list[RunResult], summary: dict, s: Settings, out: Path) -> str:
    """format.png and table.md beside the demo's outputs; returns the table."""
    plot_format(results, s, out)
    table = format_table(summary)
    against = "bnpo_sum" if "bnpo_sum" in s.estimators else s.estimators[-1]
    measures = {
        "held-out acc at the end": lambda e, seed: e["per_seed"][seed]["final_acc"],
        "held-out acc over the 2nd half": lambda e, seed: late_accuracy(e["evals"][seed]),
        "held-out format at the end": lambda e, seed: e["per_seed"][seed]["final_format"],
    }
    notes = []
    for label, measure in measures.items():
        differences = paired_differences(summary, measure, against) if len(s.estimators) > 1 else {}
        notes += [f"{name} − {against}, {label}, per seed: "
                  + ", ".join("nan" if math.isnan(d) else f"{d:+.3f}" for d in diffs)
                  for name, diffs in differences.items()]
    notes.append(machine_line(summary["machine"]))
    (out / "table.md").write_text(table + "\n\n" + "  \n".join(notes) + "\n")
    return table + "\n\n" + "\n".join(notes)
