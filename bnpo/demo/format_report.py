"""What ``python -m bnpo.demo format`` writes besides the demo's outputs: format.png (held-out accuracy and format
rate over the run, per estimator and seed) and its table (markdown)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .experiment import RunResult, Settings


def _pm(e: dict, key: str) -> str:
    return f"{e[key]:.3f} ± {e[f'{key}_sd']:.3f}"


def format_table(summary: dict) -> str:
    """Per estimator, mean ± sd over seeds: held-out accuracy and format rate at the start and the end, the summed
    reward, and the pre-clip gradient norm's CV."""
    lines = [
        "| estimator | held-out acc, start → end | format rate, start → end | reward (acc + format), end "
        "| acc per seed, end | grad-norm CV |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in summary["estimators"].items():
        per_seed = ", ".join(f"{v['final_acc']:.3f}" for v in e["per_seed"].values())
        lines.append(
            f"| {name} | {e['initial_acc']:.3f} → {_pm(e, 'final_acc')} | {e['initial_format']:.3f} → "
            f"{_pm(e, 'final_format')} | {_pm(e, 'final_reward')} | {per_seed} | {_pm(e, 'grad_norm_cv')} |"
        )
    return "\n".join(lines)


def paired_differences(summary: dict, key: str, against: str) -> dict[str, list[float]]:
    """Per estimator, the per-seed difference of ``key`` to estimator ``against`` (same seed: same start)."""
    estimators = summary["estimators"]
    base = estimators[against]["per_seed"]
    return {name: [e["per_seed"][seed][key] - base[seed][key] for seed in base]
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
    notes = []
    for key in ("final_acc", "final_format"):
        differences = paired_differences(summary, key, against) if len(s.estimators) > 1 else {}
        notes += [f"{name} − {against}, {key.replace('final_', 'held-out ')} at the end, per seed: "
                  + ", ".join("nan" if math.isnan(d) else f"{d:+.3f}" for d in diffs)
                  for name, diffs in differences.items()]
    (out / "table.md").write_text(table + "\n\n" + "  \n".join(notes) + "\n")
    return table + "\n\n" + "\n".join(notes)
