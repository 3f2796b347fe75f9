"""``python -m bnpo_probe``: its options, and the run (each estimator's gradient noise at fixed policies: ``probe``)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import probe
from .loop import ESTIMATORS
from .probe import REGIMES, ProbeSettings, run_probe
from .report import OUTPUTS, format_tables, write_outputs

QUICK = {"seeds": (0,), "snapshots": (0,), "batches": 16, "reference_batches": 32}
# What the tests run: every code path, tiny sizes, a short warm start (its numbers mean nothing).
SMOKE = {"seeds": (0,), "snapshots": (0, 2), "batches": 3, "reference_batches": 2, "fit_batches": 2,
         "kappa_min_count": 1, "theorem_scales": (1.0,),
         "loop_overrides": (("warm_start_steps", 60), ("prompts_per_step", 8))}


def parse_args(argv: list[str] | None = None) -> tuple[ProbeSettings, Path, bool]:
    defaults = ProbeSettings()
    parser = argparse.ArgumentParser(prog="python -m bnpo_probe", description=probe.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", type=Path, default=Path("bnpo_probe_out"), help="output folder (default: %(default)s)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 seed, the warm-started policy only, K = 16")
    size.add_argument("--smoke", action="store_true", help="the smallest run of every code path (for tests)")
    add("--regime", choices=(*sorted(REGIMES), "both"), default="both", help="success-rate regime (default: both)")
    add("--seeds", type=int, help=f"number of seeds, 0..N-1 (default: {len(defaults.seeds)})")
    add("--snapshots", type=int, nargs="+", help=f"RL steps to probe, 0 = warm start (default: {defaults.snapshots})")
    add("--batches", type=int, help=f"K, batches per snapshot (default: {defaults.batches})")
    add("--reference-batches", type=int,
        help=f"batches of the reference gradient (default: {defaults.reference_batches})")
    add("--estimators", nargs="+", choices=sorted(ESTIMATORS), help=f"default: {' '.join(defaults.estimators)}")
    add("--workers", type=int, help=f"jobs in parallel processes (default: {defaults.workers})")
    add("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    changes: dict = dict(QUICK) if args.quick else dict(SMOKE) if args.smoke else {}
    given = {"regimes": None if args.regime == "both" else (args.regime,),
             "seeds": None if args.seeds is None else tuple(range(args.seeds)),
             "snapshots": None if args.snapshots is None else tuple(sorted(set(args.snapshots))),
             "estimators": tuple(dict.fromkeys(args.estimators)) if args.estimators else None,
             "workers": None if args.workers is None else max(1, args.workers),
             "batches": args.batches, "reference_batches": args.reference_batches}
    changes.update({key: value for key, value in given.items() if value is not None})
    try:  # ProbeSettings checks every value
        return replace(defaults, **changes), args.out, not args.no_progress
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    settings, out, show_progress = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    summary = write_outputs(run_probe(settings, show_progress=show_progress), settings, out)
    print(format_tables(summary))
    print(f"\nprobe in {time.perf_counter() - start:.0f} s; wrote")
    for name in OUTPUTS:
        print(f"  {out / name}")
