"""scripts/gpu_check.sh on this CPU machine: what it needs of a GPU machine without verl, checked where a CPU can."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from recipe_helpers import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_cuda_device_it_checks_nothing_and_says_so(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"]["cuda_available"] is False and report["steps"] == {}
    assert report["error"] == "torch sees no CUDA device: nothing was checked"


def test_its_estimator_test_selection_is_the_cuda_test():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                           "tests/test_estimator.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[0] == "tests/test_estimator.py::test_cuda_matches_cpu_and_keeps_device", proc.stdout


def test_the_benchmark_runs_without_verl(tmp_path):
    """The GPU machine may have torch but no verl: the benchmark then times bnpo's core against the reference loop."""
    code = ("import sys, runpy; sys.modules['verl'] = None; "  # import verl raises ImportError
            f"sys.argv = ['bench', '--smoke', '--device', 'cpu', '--json', {str(tmp_path / 'b.json')!r}]; "
            "runpy.run_path('benchmarks/bench_advantage.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert {r["impl"] for r in data["results"]} == {"bnpo", "reference_loop", "floor"}
    assert data["machine"]["verl"] is None
    assert [(c["impl"], c["against"], c["ok"]) for c in data["checks"]] == [("reference_loop", "bnpo", True)]


def test_a_plan_that_could_not_be_written_is_a_failure_in_the_report_not_a_crash(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "device", lambda: {"cuda_available": True})
    monkeypatch.setattr(gpu_check, "has_pytest", lambda: True)
    # every step passes, but no plan command writes its JSON (as when it fails before planning)
    monkeypatch.setattr(gpu_check, "run", lambda cmd, log: {"cmd": " ".join(cmd), "rc": 0, "log": os.path.basename(log)})
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    plans = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["memory_plans"]
    assert set(plans) == {f"{m}_{g}gpus" for m in ("Qwen2.5-Math-7B", "Qwen2.5-Math-1.5B") for g in (4, 8)}
    assert all(p["plan"] is None and "no plan written (FileNotFoundError)" in p["error"] for p in plans.values())
