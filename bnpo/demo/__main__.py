"""Command line of the demo.

``python -m bnpo.demo [--task reverse|reverse_format] [--quick] [--estimators ...] [--seeds N] [--steps N] [--out DIR]
[OVERRIDE ...]``: verl's ``main_ppo`` trainer on this CPU (vLLM rollout through bnpo's CPU port), once per estimator
and seed, from one warm-started checkpoint; OVERRIDEs are Hydra overrides for every run (e.g.
``+algorithm.bnpo.max_weight=100``). ``--task reverse_format``: two rewards (acc, format); ad_bnpo, bnpo and grpo on
the summed score, and gdpo_v1. (The gradient-noise probe is ``python -m bnpo_probe``.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from .plan import VARIANTS, DemoSettings

QUICK = {"steps": 10, "seeds": (0,), "test_freq": 5}  # for tests: seed 0 only, one run per estimator


def _at_least_1(text: str) -> int:
    """The type of --seeds, --steps and --test-freq."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a whole number >= 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> tuple[DemoSettings, Path, bool]:
    defaults = DemoSettings()
    # no abbreviated options: main() looks for --summarize-only in argv as written
    parser = argparse.ArgumentParser(prog="python -m bnpo.demo", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bnpo_demo_out"), help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"a short run for tests: {QUICK['steps']} steps, seed 0, "
                                                             f"validation every {QUICK['test_freq']}")
    parser.add_argument("--task", choices=sorted(VARIANTS), default=defaults.variant,
                        help="reverse: one binary reward; reverse_format: two, acc and format (default: %(default)s)")
    parser.add_argument("--estimators",
                        help="comma-separated names of verl's estimator registry (default: "
                             + "; ".join(f"{name}: {','.join(v.estimators)}" for name, v in VARIANTS.items())
                             + "); one registered through VERL_USE_EXTERNAL_MODULES works too")
    parser.add_argument("--seeds", type=_at_least_1, help=f"number of seeds, 0..N-1 (default: {len(defaults.seeds)})")
    parser.add_argument("--steps", type=_at_least_1, help=f"training steps per run (default: {defaults.steps})")
    parser.add_argument("--test-freq", type=_at_least_1, help=f"validate every N steps (default: {defaults.test_freq})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--summarize-only", action="store_true",
                        help="train nothing: summarize a finished demo in --out again (same options as its run)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides of verl's config for every run, e.g. +algorithm.bnpo.fixed_alpha=1")
    args = parser.parse_args(argv)
    changes: dict = dict(QUICK) if args.quick else {}
    changes.update({key: getattr(args, key) for key in ("steps", "test_freq") if getattr(args, key) is not None})
    if args.seeds is not None:
        changes["seeds"] = tuple(range(args.seeds))
    names = args.estimators if args.estimators is not None else ",".join(VARIANTS[args.task].estimators)
    estimators = tuple(dict.fromkeys(name.strip() for name in names.split(",") if name.strip()))
    if not estimators:
        parser.error("--estimators: name at least one estimator, e.g. --estimators bnpo,grpo")
    if bad := [o for o in args.overrides if "=" not in o]:
        parser.error(f"{' '.join(bad)}: not a Hydra override (key=value); the demo's options are listed by --help")
    settings = replace(defaults, **changes, variant=args.task, estimators=estimators,
                       extra_overrides=tuple(args.overrides))
    return settings, args.out, not args.no_progress


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings, out, show_progress = parse_args(argv)
    from .launcher import DemoError, resummarize, run
    from .results import format_table

    start = time.perf_counter()
    try:
        if "--summarize-only" in argv:
            summary, written = resummarize(settings, out)
        else:
            summary, written = run(settings, out, show_progress=show_progress)
    except DemoError as err:
        sys.exit(f"python -m bnpo.demo: {err}")
    print(format_table(summary))
    print(f"\n{settings.variant}: {len(settings.estimators)} estimators x {len(settings.seeds)} seeds x "
          f"{settings.steps} steps in {time.perf_counter() - start:.0f} s; wrote", *written, out / "logs", sep="\n  ")


if __name__ == "__main__":
    main()
