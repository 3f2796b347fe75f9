"""The checks to run the day a GPU is available (scripts/gpu_check.sh): one JSON the docs' GPU figures come from.

Each step's outcome goes into ``<out>/gpu_check.json``: the device and one process's CUDA context, the CUDA estimator
test, the benchmark's CUDA path, the recipe's memory plans against this device's memory, and the plan's estimates
measured again (scripts/gpu_check_memory.py). docs/gpu.md lists them and what they need (not Ray or vLLM; verl
only for step 5's entropy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "scripts"))  # for a caller that loads this file by path (the tests)
from gpu_check_memory import device  # noqa: E402

MODELS = ("Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-Math-1.5B")
NODE_SIZES = (4, 8)
STEP_TIMEOUT_S = 1800


def step(name: str) -> None:
    print(f"gpu_check: {name}", file=sys.stderr, flush=True)


def run(cmd: list[str], log: str) -> dict:
    """Run ``cmd`` in the checkout, its output teed to ``log``; returns its exit status and duration."""
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT_S)
    tail = open(log).read().strip().splitlines()[-3:]
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.monotonic() - start, 1),
            "log": os.path.basename(log), "tail": tail}


def has_pytest() -> bool:
    return subprocess.run([sys.executable, "-c", "import pytest"], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "gpu_check_out"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "steps": {}}
    steps = report["steps"]

    step("1/5 device")
    report["device"] = device()
    if not report["device"]["cuda_available"]:
        report["error"] = "torch sees no CUDA device: nothing was checked"
    else:
        step("2/5 CUDA estimator test")
        if not has_pytest():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pytest"], capture_output=True)
        steps["estimator_test"] = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                       "tests/test_estimator.py"], os.path.join(args.out, "estimator_test.log")) \
            if has_pytest() else {"rc": None, "error": "pytest is not installed and pip could not install it"}

        step("3/5 benchmark, CUDA path")
        steps["benchmark"] = run([sys.executable, "benchmarks/bench_advantage.py", "--device", "cuda", "--quick",
                                  "--json", os.path.join(args.out, "bench_cuda.json")],
                                 os.path.join(args.out, "benchmark.log"))

        step("4/5 memory plans against this device's memory")
        plans = steps["memory_plans"] = {}
        for model in MODELS:
            for gpus in NODE_SIZES:
                name = f"{model.split('/')[-1]}_{gpus}gpus"
                plan_json = os.path.join(args.out, f"plan_{name}.json")
                plans[name] = run([sys.executable, "-m", "bnpo.verl.preflight.memory_plan", "--device", "--model", model,
                                   "--gpus", str(gpus), "--json", plan_json], os.path.join(args.out, f"plan_{name}.log"))
                try:  # a plan command that failed early wrote none: its log says why, the other steps go on
                    with open(plan_json) as f:
                        plans[name]["plan"] = json.load(f)
                except (OSError, ValueError) as err:
                    plans[name]["plan"] = None
                    plans[name]["error"] = f"no plan written ({type(err).__name__}); see {plans[name]['log']}"
        step("5/5 the plan's estimates measured")
        steps["memory_estimates"] = run([sys.executable, "scripts/gpu_check_memory.py", "--json",
                                         os.path.join(args.out, "memory_estimates.json")],
                                        os.path.join(args.out, "memory_estimates.log"))
    path = os.path.join(args.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    # a plan that does not fit is a finding, not a failure of the check; the test and the benchmark must pass
    failed = [k for k in ("estimator_test", "benchmark", "memory_estimates") if steps.get(k, {}).get("rc") != 0]
    failed += [f"memory_plans/{k}" for k, v in steps.get("memory_plans", {}).items() if v["plan"] is None]
    print(f"gpu_check: wrote {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed or "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
