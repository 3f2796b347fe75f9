"""The checks to run the day a GPU is available (scripts/gpu_check.sh): one JSON the docs' GPU figures come from.

Needs torch with CUDA, numpy, PyYAML, OmegaConf, tqdm and transformers (a machine with verl has them), and pytest for
the CUDA estimator test (installed with pip when missing and an index is reachable). Ray and vLLM are not needed, nor
verl but for step 5's entropy: the estimator test and the benchmark use bnpo's core when verl is absent (the benchmark
adds verl's estimators when it is installed), and the memory plan reads the recipe's YAML.

Steps, each recorded in ``<out>/gpu_check.json`` with its outcome:
1. the device: name, driver, torch and its CUDA, and one process's CUDA context measured with nvidia-smi (the
   memory plan's ``CUDA_CONTEXT_GIB`` is an estimate of it);
2. the CUDA estimator test (``tests/test_estimator.py -m cuda``: CUDA against CPU, the device kept);
3. the benchmark's CUDA path (``benchmarks/bench_advantage.py --device cuda --quick``);
4. the memory plan of the recipe's runs (both models, 4 and 8 GPUs of this card) against this device's total and
   free memory (``python -m bnpo.verl.preflight.memory_plan --device``);
5. the plan's measured estimates measured again here (``scripts/gpu_check_memory.py``: the CUDA total, the logits
   with verl's entropy, one decoder layer per token).
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


def smi_used_mib(index: int) -> int:
    out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def device() -> dict:
    """The device, and the memory one process's CUDA context takes (nvidia-smi before and after torch starts it)."""
    import torch

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not info["cuda_available"]:
        return info
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    info["nvidia_smi"] = smi.stdout.strip().splitlines()
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    before = smi_used_mib(0)
    torch.zeros(1, device="cuda:0")
    torch.cuda.synchronize()
    info["cuda_context_mib_measured"] = smi_used_mib(0) - before
    return info


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
