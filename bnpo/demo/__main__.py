"""Command line of the demo.

``python -m bnpo.demo [--quick] [--out DIR] [--seeds N] [--steps N] ...``: the training comparison.
``python -m bnpo.demo format [--quick] ...``: the same with a reward acc + format: AD-BNPO against BNPO and GRPO.
``python -m bnpo.demo probe [--quick] [--regime u_shaped|unimodal|both] ...``: the gradient-noise probe.
Each takes ``--portable``: numbers that do not depend on the CPU's instruction sets (bnpo/demo/portable.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from .experiment import ESTIMATORS, Settings, run
from .format_report import write_format_outputs
from .portable import ensure_portable
from .probe import run_probe
from .probe_cli import parse_args as parse_probe_args
from .probe_report import OUTPUTS as PROBE_OUTPUTS
from .probe_report import format_tables as format_probe_tables
from .probe_report import write_outputs as write_probe_outputs
from .report import format_table, write_outputs

QUICK = {"steps": 40, "seeds": 2}  # about a minute on a busy 2-core machine
# the format variant: reward acc + format, AD-BNPO (components acc, format) against BNPO on the sum and GRPO
FORMAT = Settings(task_variant="format", estimators=("ad_bnpo", "bnpo_sum", "grpo"), eval_every=25)
PORTABLE_HELP = ("numbers that do not depend on the CPU's instruction sets; other machines may still differ "
                 "(about 2-2.6x slower; see bnpo/demo/portable.py)")


def parse_args(
    argv: list[str] | None = None, defaults: Settings = Settings(), prog: str = "python -m bnpo.demo",
    out: str = "bnpo_demo_out",
) -> tuple[Settings, Path, bool]:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help=f"a short run: {QUICK['seeds']} seeds x {QUICK['steps']} steps"
    )
    parser.add_argument("--seeds", type=int, help=f"number of seeds, 0..N-1 (default: {len(defaults.seeds)})")
    parser.add_argument("--steps", type=int, help=f"RL steps per run (default: {defaults.steps})")
    parser.add_argument(
        "--estimators", nargs="+", choices=sorted(ESTIMATORS), help=f"default: {' '.join(defaults.estimators)}"
    )
    parser.add_argument("--workers", type=int, help=f"runs in parallel processes (default: {defaults.workers})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--portable", action="store_true", help=PORTABLE_HELP)
    args = parser.parse_args(argv)
    changes: dict = dict(QUICK) if args.quick else {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if "seeds" in changes:
        if changes["seeds"] < 1:
            parser.error(f"--seeds {changes['seeds']}: need at least 1 seed")
        changes["seeds"] = tuple(range(changes["seeds"]))
    if changes.get("steps", defaults.steps) < 2:
        parser.error(f"--steps {changes['steps']}: need at least 2 steps to measure a gradient-norm spread")
    if args.estimators:
        changes["estimators"] = tuple(dict.fromkeys(args.estimators))
    if args.workers is not None:
        changes["workers"] = max(1, args.workers)
    settings = replace(defaults, **changes)
    return settings, args.out, not args.no_progress


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ensure_portable(argv)
    if argv[:1] == ["probe"]:
        probe_main(argv[1:])
        return
    if argv[:1] == ["format"]:
        format_main(argv[1:])
        return
    settings, out, show_progress = parse_args(argv)
    start = time.perf_counter()
    results = run(settings, show_progress=show_progress)
    summary = write_outputs(results, settings, out)
    what = f"{len(settings.seeds)} seeds x {settings.steps} steps"
    _print_done(format_table(summary), what, start, out, ("summary.json", "metrics.csv", "gradnorm.png", "reward.png"))


def format_main(argv: list[str]) -> None:
    """``python -m bnpo.demo format ...``: the format variant (the demo's options, other defaults)."""
    settings, out, show_progress = parse_args(argv, FORMAT, "python -m bnpo.demo format", "bnpo_format_out")
    start = time.perf_counter()
    results = run(settings, show_progress=show_progress)
    summary = write_outputs(results, settings, out)
    table = write_format_outputs(results, summary, settings, out)
    what = f"format variant, {len(settings.seeds)} seeds x {settings.steps} steps"
    names = ("summary.json", "metrics.csv", "table.md", "format.png", "gradnorm.png", "reward.png")
    _print_done(table, what, start, out, names)


def probe_main(argv: list[str]) -> None:
    """``python -m bnpo.demo probe ...``: the gradient-noise probe (options: bnpo/demo/probe_cli.py)."""
    settings, out, show_progress = parse_probe_args(argv)
    start = time.perf_counter()
    points = run_probe(settings, show_progress=show_progress)
    summary = write_probe_outputs(points, settings, out)
    _print_done(format_probe_tables(summary), "probe", start, out, PROBE_OUTPUTS)


def _print_done(table: str, what: str, start: float, out: Path, names: tuple[str, ...]) -> None:
    print(table)
    print(f"\n{what} in {time.perf_counter() - start:.0f} s; wrote")
    for name in names:
        print(f"  {out / name}")


if __name__ == "__main__":
    main()
