"""``python -m bnpo_probe``: its options, and the run (every estimator's gradient noise at fixed policies: ``probe``)."""

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
SMOKE = {"seeds": (0,), "snapshots": (0, 2), "batches": 3, "reference_batches": 2, "pool_warmup_batches": 2,
         "kappa_min_count": 1, "theorem_scales": (1.0,),
         "loop_overrides": (("warm_start_steps", 60), ("prompts_per_step", 8), ("eval_questions", 16))}


def parse_args(argv: list[str] | None = None) -> tuple[ProbeSettings, Path, bool]:
    defaults = ProbeSettings()
    parser = argparse.ArgumentParser(prog="python -m bnpo_probe", description=probe.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bnpo_probe_out"), help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 seed, the warm-started policy only, K = 16")
    parser.add_argument("--smoke", action="store_true", help="the smallest run of every code path (for tests)")
    parser.add_argument("--regime", choices=(*sorted(REGIMES), "both"), default="both",
                        help="success-rate regime (default: both)")
    parser.add_argument("--seeds", type=int, help=f"number of seeds, 0..N-1 (default: {len(defaults.seeds)})")
    parser.add_argument("--snapshots", type=int, nargs="+",
                        help=f"RL steps to probe, 0 = warm start (default: {defaults.snapshots})")
    parser.add_argument("--batches", type=int, help=f"K, batches per snapshot (default: {defaults.batches})")
    parser.add_argument("--reference-batches", type=int,
                        help=f"batches of the reference gradient (default: {defaults.reference_batches})")
    parser.add_argument("--estimators", nargs="+", choices=sorted(ESTIMATORS),
                        help=f"default: {' '.join(defaults.estimators)}")
    parser.add_argument("--workers", type=int, help=f"jobs in parallel processes (default: {defaults.workers})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.quick and args.smoke:
        parser.error("--quick and --smoke: choose one")
    changes: dict = dict(QUICK) if args.quick else dict(SMOKE) if args.smoke else {}
    if args.regime != "both":
        changes["regimes"] = (args.regime,)
    for key, least, need in (("seeds", 1, "need at least 1 seed"),
                             ("batches", 2, "need at least 2 batches to measure a spread"),
                             ("reference_batches", 1, "need at least 1")):
        value = getattr(args, key)
        if value is not None and value < least:
            parser.error(f"--{key.replace('_', '-')} {value}: {need}")
        if value is not None:
            changes[key] = tuple(range(value)) if key == "seeds" else value
    if args.snapshots is not None:
        if min(args.snapshots) < 0:
            parser.error(f"--snapshots {args.snapshots}: steps are >= 0 (0 is the warm-started policy)")
        changes["snapshots"] = tuple(sorted(set(args.snapshots)))
    if args.estimators:
        if "reinforce" not in args.estimators:
            parser.error("--estimators: keep reinforce; its mean gradient is the probe's reference direction of ∇J")
        changes["estimators"] = tuple(dict.fromkeys(args.estimators))
    if args.workers is not None:
        changes["workers"] = max(1, args.workers)
    return replace(defaults, **changes), args.out, not args.no_progress


def main(argv: list[str] | None = None) -> None:
    settings, out, show_progress = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    points = run_probe(settings, show_progress=show_progress)
    summary = write_outputs(points, settings, out)
    print(format_tables(summary))
    print(f"\nprobe in {time.perf_counter() - start:.0f} s; wrote")
    for name in OUTPUTS:
        print(f"  {out / name}")
