"""The advantage benchmark keeps running: smallest size end to end, JSON schema, skips and cross-checks.

Speed itself is not asserted here (benchmarks/bench_advantage.py reports it); these tests only make
sure the benchmark still runs against the current bnpo and verl and reports well-formed numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_advantage.py"
FIELDS = {"impl", "n_rollouts", "response_len", "device", "allocator", "median_s", "median_cpu_s", "peak_mem_bytes"}
ESTIMATORS = {"bnpo", "ad_bnpo", "reference_loop", "grpo", "grpo_vectorized", "rloo_vectorized"}


def _load_bench():
    """benchmarks/bench_advantage.py as a module (benchmarks/ is a script folder, not a package)."""
    if "bench_advantage" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_advantage", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_advantage"] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules["bench_advantage"]


def _check_results(results: list, impls: set, sizes: set, allocators: set = frozenset({"default"})) -> None:
    for row in results:
        assert set(row) == FIELDS, row
        for key in ("median_s", "median_cpu_s"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] >= 0, row
        assert row["median_s"] > 0, row
        assert isinstance(row["peak_mem_bytes"], int) and row["peak_mem_bytes"] > 0, row
    seen = {(r["impl"], r["n_rollouts"], r["response_len"], r["device"], r["allocator"]) for r in results}
    assert seen == {(impl, n, length, "cpu", a) for impl in impls for n, length in sizes for a in allocators}


def _without_malloc_settings() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def test_smoke_run_under_both_allocators_writes_json_plot_and_tables(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "scaling.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--allocator", "both", "--device", "cpu", "--json", str(out),
         "--plot", str(png)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=_without_malloc_settings(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    bench = _load_bench()
    _check_results(data["results"], set(bench.IMPLS), {bench.DEFAULT_SIZES[0]}, {"default", "reuse"})
    assert data["skipped"] == []
    # The re-implemented reference loop agrees with bnpo, and verl's two GRPOs with each other, under both.
    assert {(c["impl"], c["against"], c["allocator"]) for c in data["checks"]} == {
        (a, b, alloc) for a, b in (("reference_loop", "bnpo"), ("grpo", "grpo_vectorized")) for alloc in ("default", "reuse")}
    assert all(c["ok"] and c["max_rel_err"] <= 1e-4 for c in data["checks"]), data["checks"]
    # each setting ran in a process that had exactly its glibc variables
    assert {name: run["env"] for name, run in data["runs"].items()} == bench.ALLOCATORS
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| cpu | 1024 x 1024 | default |" in proc.stdout and "| cpu | 1024 x 1024 | reuse |" in proc.stdout
    assert "bnpo / floor" in proc.stdout and "reference_loop / bnpo" in proc.stdout
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["cpu"]


def test_a_rerun_without_verl_times_the_same_estimators(tmp_path):
    """On a machine without verl the re-run for the other allocator must not pick up a verl installed elsewhere."""
    code = ("import sys, runpy; sys.modules['verl'] = None; "  # import verl raises ImportError
            f"sys.argv = ['bench', '--sizes', '32x8', '--repeats', '1', '--allocator', 'both', '--device', 'cpu', "
            f"'--json', {str(tmp_path / 'b.json')!r}]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_without_malloc_settings())
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert {(r["impl"], r["allocator"]) for r in data["results"]} == {
        (impl, alloc) for impl in ("bnpo", "reference_loop", "floor") for alloc in ("default", "reuse")}


def test_slow_loops_are_skipped_and_reported(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    argv = ["--sizes", "32x8,64x8", "--impls", "bnpo,reference_loop,grpo_vectorized", "--slow-max-rollouts", "32",
            "--repeats", "2", "--threads", "0", "--allocator", "current", "--json", str(out)]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    kept = {(r["impl"], r["n_rollouts"]) for r in data["results"]}
    assert ("reference_loop", 32) in kept and ("reference_loop", 64) not in kept
    assert [(s["impl"], s["n_rollouts"]) for s in data["skipped"]] == [("reference_loop", 64)]
    assert "skipped reference_loop at 64 x 8" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_loop_matches_bnpo_on_benchmark_batches(seed):
    """The baseline is faithful: the per-sample loop and bnpo give the same advantages (spec: 1e-4)."""
    bench = _load_bench()
    from bnpo.core.advantage import compute_bnpo_advantage
    from bnpo.core.config import BNPOConfig

    batch = bench.make_batch(96, 24, "cpu", seed=seed)
    ref, _ = bench.reference_loop(batch.token_level_rewards, batch.response_mask, batch.index)
    ours, _, _ = compute_bnpo_advantage(batch.token_level_rewards, batch.response_mask, batch.index, BNPOConfig())
    assert bench.max_rel_err(ref, ours) <= 1e-4
    assert ours.abs().max() > 0  # the batch carries signal, so the comparison is not 0 == 0


def test_bad_size_is_rejected():
    bench = _load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "100x8"])  # not a multiple of the group size


def test_bnpo_keeps_the_exact_values_on_continuous_rewards():
    """The 1e-4 claim is against the reference's formulas evaluated exactly (tests/oracle.py, float64): on continuous
    rewards, where s - p_hat cancels, bnpo's float64 per-question statistics keep 1e-6 even for float32 rewards."""
    import numpy as np
    import torch
    from batches import outcome_batch, scalar
    from oracle import reference_advantages

    from bnpo import BNPOConfig, compute_bnpo_advantage

    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(5):
        rewards = [float(x) for x in rng.uniform(0, 1, size=96).astype(np.float32)]  # exact in float32 inputs
        uids = [f"q{i // 8}" for i in range(96)]
        trl, mask, index = outcome_batch(rewards, uids)
        exact = torch.tensor(reference_advantages(rewards, uids)[0], dtype=torch.float64)
        counted = exact.abs() > 1e-6
        got = scalar(compute_bnpo_advantage(trl, mask, index, BNPOConfig())[0], mask)
        worst = max(worst, float(((got - exact).abs()[counted] / exact.abs()[counted]).max()))
    assert worst < 1e-6, worst
