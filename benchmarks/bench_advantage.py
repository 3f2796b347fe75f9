"""Benchmark: the cost of the BNPO advantage against the published per-sample loop and verl's estimators.

Timed (through verl's registry, if installed): bnpo, ad_bnpo (components "acc", "format"), reference_loop (the
published code's per-sample loop, re-implemented here), verl's grpo (a per-sample loop), grpo_vectorized and
rloo_vectorized, and floor: the mask copied to float32, the one (bs, L) write any estimator must do. Per size: a
warm-up call each, then repeats round-robin (load from other processes hits all alike); medians of wall clock and
calling-thread CPU time; peak extra memory from one more call (CPU: torch profiler's allocations + tracemalloc's
peak; CUDA: max_memory_allocated). Each allocator setting (ALLOCATORS) runs in a process of its own: with glibc as
verl's driver runs it, every buffer of 32 MiB or more is fresh pages on every call (docs/performance.md).

    python benchmarks/bench_advantage.py --json benchmarks/results/bench_cpu.json \
        --plot benchmarks/results/scaling_cpu.png           # full grid, both allocators (~5 min on 2 vCPUs)
    python benchmarks/bench_advantage.py --quick             # both allocators, ~1 min on 2 vCPUs
    python benchmarks/bench_advantage.py --smoke --json out.json   # smallest size, this process's allocator only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bnpo import BNPOConfig, compute_bnpo_advantage

_WITHOUT_VERL = "BNPO_BENCH_WITHOUT_VERL"  # set for a re-run whose parent had no verl: the same estimators in both
try:
    if os.environ.get(_WITHOUT_VERL):
        raise ImportError
    import verl  # noqa: F401  (loads the verl.plugins entry points, which register bnpo / ad_bnpo)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
except ImportError:  # a GPU machine with torch but no verl (scripts/gpu_check.sh): bnpo's core, no verl estimators
    verl = get_adv_estimator_fn = None

GROUP_SIZE = 16
DEFAULT_SIZES = [(n, length) for n in (1024, 8192, 65536) for length in (1024, 4096)]
QUICK_SIZES = [(1024, 1024), (8192, 1024)]
# glibc's allocator settings, each run in a process of its own (glibc reads them at start-up); reuse: freed
# memory is kept and handed out again instead of every buffer above the mmap threshold being fresh pages.
ALLOCATORS = {"default": {}, "reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}}


@dataclass
class Batch:  # one batch as verl hands it to the advantage estimator
    token_level_rewards: torch.Tensor  # (bs, L) float32, outcome reward on the last response token
    response_mask: torch.Tensor  # (bs, L) int64
    index: np.ndarray  # (bs,) object array of uid strings
    non_tensor_batch: dict  # "acc", "format": (bs,) float64 component rewards


def make_batch(n_rollouts: int, response_len: int, device: str, seed: int = 0) -> Batch:
    """A batch like verl's: uuid4 uids, GROUP_SIZE rollouts per question, a binary outcome on the last token."""
    if n_rollouts % GROUP_SIZE:
        raise ValueError(f"n_rollouts={n_rollouts} must be a multiple of the group size {GROUP_SIZE}.")
    rng = np.random.default_rng(seed)
    num_questions = n_rollouts // GROUP_SIZE
    uids = np.array([str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(num_questions)], dtype=object)
    p = rng.beta(0.8, 1.2, num_questions)  # per-question success rates: many hard, some easy questions
    order = rng.permutation(n_rollouts)  # balance_batch reorders verl's batch by length
    question = np.repeat(np.arange(num_questions), GROUP_SIZE)[order]
    acc = (rng.random(n_rollouts) < p[question]).astype(np.float64)
    fmt = (rng.random(n_rollouts) < 0.9).astype(np.float64)
    # Response lengths: a wide spread, with about a tenth cut off at the maximum length.
    lengths = np.clip(rng.lognormal(math.log(response_len / 4), 0.8, n_rollouts), 1, response_len).astype(np.int64)
    lengths_t = torch.from_numpy(lengths).to(device)
    mask = (torch.arange(response_len, device=device) < lengths_t.unsqueeze(-1)).to(torch.int64)
    rewards = torch.zeros(n_rollouts, response_len, dtype=torch.float32, device=device)
    rewards[torch.arange(n_rollouts, device=device), lengths_t - 1] = torch.from_numpy(acc).to(device, torch.float32)
    return Batch(rewards, mask, uids[question], {"acc": acc, "format": fmt})


def reference_loop(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray,
                   reward_min: float = 0.0, reward_max: float = 1.0, max_weight: float = 1e6) -> tuple:
    """BNPO in the published code's per-sample structure (changyi7231/BNPO), the baseline to beat: (bs, L)
    advantages and returns (equal) from (bs, L) rewards and mask and (bs,) uids."""
    scores = (token_level_rewards.sum(dim=-1) - reward_min) / (reward_max - reward_min)
    with torch.no_grad():
        rewards_of = defaultdict(list)
        for i in range(scores.shape[0]):
            rewards_of[index[i]].append(scores[i])
        zero = scores.new_tensor(0.0)  # the reference's baseline of a singleton question
        mean_of = {uid: torch.mean(torch.stack(rs)) if len(rs) > 1 else zero for uid, rs in rewards_of.items()}
        means = torch.stack(list(mean_of.values()))
        mu, var = (means.mean(), means.var()) if means.numel() > 1 else (zero, scores.new_tensor(1.0))
        nu = mu * (1 - mu) / var - 1
        alpha = torch.clamp(1 + mu * nu / 3, min=1.0)
        beta = torch.clamp(1 + (1 - mu) * nu / 3, min=1.0)
        for i in range(scores.shape[0]):
            p = mean_of[index[i]]
            density = torch.exp(torch.distributions.Beta(alpha, beta).log_prob(p))
            weight = torch.clamp(1.0 / density, 0.0, max_weight)
            scores[i] = weight * (scores[i] - p)
        advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


def _verl(name: str, **extra) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
    fn = get_adv_estimator_fn(name)
    if name == "ad_bnpo":  # its components come from the batch
        return lambda b: fn(b.token_level_rewards, b.response_mask, index=b.index, **extra,
                            non_tensor_batch=b.non_tensor_batch)
    return lambda b: fn(b.token_level_rewards, b.response_mask, index=b.index, **extra)


# name -> (Batch -> (advantages, returns)); without verl bnpo is bnpo's core, which verl's registered estimator calls
IMPLS = {"bnpo": lambda b: compute_bnpo_advantage(b.token_level_rewards, b.response_mask, b.index, BNPOConfig())[:2],
         "reference_loop": lambda b: reference_loop(b.token_level_rewards, b.response_mask, b.index),
         "floor": lambda b: (b.response_mask.to(torch.float32, copy=True),) * 2}
if verl is not None:
    IMPLS = {"bnpo": _verl("bnpo", config=None),
             "ad_bnpo": _verl("ad_bnpo", config={"bnpo": {"components": ["acc", "format"]}}),
             "reference_loop": IMPLS["reference_loop"],
             **{name: _verl(name) for name in ("grpo", "grpo_vectorized", "rloo_vectorized")}, "floor": IMPLS["floor"]}
SLOW = {"reference_loop", "grpo"}  # Python loops over samples: skipped above --slow-max-rollouts
# Pairs that must agree on every benchmark batch: (impl, impl it is checked against, rtol).
CHECKS = (("reference_loop", "bnpo", 1e-4), ("grpo", "grpo_vectorized", 1e-4))


def timed(call: Callable, batch: Batch, device: str) -> tuple[float, float]:
    """Wall-clock and this thread's CPU seconds of one call (CPU time leaves out time the OS gave other jobs)."""
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    sync()
    start, cpu = time.perf_counter(), time.thread_time()
    call(batch)
    sync()
    return time.perf_counter() - start, time.thread_time() - cpu


def peak_memory(call: Callable, batch: Batch, device: str) -> int:
    """Bytes the call allocates at its peak, beyond its inputs (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call(batch)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    tracemalloc.start()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            call(batch)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return int(max([0, *itertools.accumulate(nbytes for _, nbytes in events)]) + python_peak)


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest elementwise |got - want| / |want|, with |want| floored at 1e-6 of the largest |want|."""
    got, want = got.double(), want.double()
    floor = 1e-6 * float(want.abs().max().clamp_min(1e-12))
    return float(((got - want).abs() / want.abs().clamp_min(floor)).max())


def run(sizes, devices, repeats: int, slow_repeats: int, slow_max_rollouts: int, names) -> dict:
    results, skipped, checks = [], [], []
    for device, (n, length) in itertools.product(devices, sizes):
        where = dict(n_rollouts=n, response_len=length, device=device)
        chosen = [x for x in names if not (x in SLOW and n > slow_max_rollouts)]
        skipped += [dict(impl=x, **where, reason=f"Python per-sample loop; n_rollouts > --slow-max-rollouts="
                         f"{slow_max_rollouts}") for x in names if x not in chosen]
        print(f"advantage benchmark: {device} {n} x {length}", file=sys.stderr, flush=True)
        batch = make_batch(n, length, device)
        for x in chosen:  # warm-up
            IMPLS[x](batch)
        for a, b, rtol in CHECKS:
            if a in chosen and b in chosen:
                err = max_rel_err(IMPLS[a](batch)[0], IMPLS[b](batch)[0])
                checks.append(dict(impl=a, against=b, **where, max_rel_err=err, ok=err <= rtol))
        times = {x: [] for x in chosen}
        for round_ in range(max(repeats, slow_repeats)):  # round-robin: other processes' load hits all alike
            for x in chosen:
                if round_ < (slow_repeats if x in SLOW else repeats):
                    times[x].append(timed(IMPLS[x], batch, device))
        for x in chosen:
            wall, cpu = zip(*times[x])
            results.append(dict(impl=x, **where, median_s=statistics.median(wall), median_cpu_s=statistics.median(cpu),
                                peak_mem_bytes=peak_memory(IMPLS[x], batch, device)))
        del batch
    return {"results": results, "skipped": skipped, "checks": checks}


def machine() -> dict:
    """What the numbers depend on: versions, CPU (lscpu's model name), cores, threads, torch's huge-page switch."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                               env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name:")]
    info = dict(python=platform.python_version(), torch=torch.__version__, verl=verl and verl.__version__,
                cpu=names[0] if names else platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE", ""))
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _malloc_env(env) -> dict:
    """The glibc allocator settings in an environment (MALLOC_* variables, GLIBC_TUNABLES)."""
    return {k: v for k, v in env.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _fmt_bytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def _env_text(allocator: str) -> str:
    return " ".join(f"{k}={v}" for k, v in ALLOCATORS.get(allocator, {}).items()) or "glibc as it comes"


def report(data: dict) -> str:
    """A markdown table, the allocators side by side: medians (peak extra memory) and ratios; skips, checks."""
    rows = defaultdict(dict)  # (device, n, L) -> allocator -> impl -> result
    for r in data["results"]:
        rows[(r["device"], r["n_rollouts"], r["response_len"])].setdefault(r["allocator"], {})[r["impl"]] = r
    names = [name for name in IMPLS if any(r["impl"] == name for r in data["results"])]
    ratios = [(a, b) for a, b in (("bnpo", "grpo_vectorized"), ("bnpo", "floor"), ("ad_bnpo", "bnpo"),
                                  ("reference_loop", "bnpo")) if a in names and b in names]

    def ratio(row: dict, num: str, den: str, key: str) -> str:
        return f"{row[num][key] / row[den][key]:.2f}" if num in row and den in row else "-"

    heads = names + [f"{a} / {b}" for a, b in ratios]
    lines = ["Median time per call (peak extra memory), then ratios of medians, wall clock (in brackets: of the "
             "calling thread's CPU time, which leaves out time the OS gave other jobs); each allocator setting in its "
             "own process, " + "; ".join(f"{a}: {_env_text(a)}" for a in data["runs"]) + ":", "",
             "| device | n_rollouts x L | allocator | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---|" * len(heads)]
    for (device, n, length), by in rows.items():
        for alloc, row in by.items():
            cells = [f"{_fmt_s(row[x]['median_s'])} ({_fmt_bytes(row[x]['peak_mem_bytes'])})" if x in row else "skipped"
                     for x in names]
            cells += [f"{ratio(row, a, b, 'median_s')} ({ratio(row, a, b, 'median_cpu_s')})" for a, b in ratios]
            lines.append(f"| {device} | {n} x {length} | {alloc} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in data["skipped"]:
        # A per-sample loop costs about the same per sample at any batch size: extrapolate linearly.
        done = [r for r in data["results"]
                if all(r[k] == s[k] for k in ("impl", "device", "response_len", "allocator"))]
        last = max(done, key=lambda r: r["n_rollouts"], default=None)
        guess = f" (~{_fmt_s(last['median_s'] * s['n_rollouts'] / last['n_rollouts'])} per call, extrapolated)" \
            if last else ""
        lines.append(f"skipped {s['impl']} at {s['n_rollouts']} x {s['response_len']} on {s['device']} "
                     f"({s['allocator']}): {s['reason']}{guess}")
    for c in data["checks"]:
        lines.append(f"check {c['impl']} == {c['against']} at {c['n_rollouts']} x {c['response_len']} on {c['device']} "
                     f"({c['allocator']}): max rel err {c['max_rel_err']:.2e} ({'ok' if c['ok'] else 'MISMATCH'})")
    return "\n".join(lines)


def plot(data: dict, path: str) -> None:
    """Log-log time against batch size, one panel per allocator setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allocators = list(data["runs"])
    fig, axes = plt.subplots(1, len(allocators), figsize=(7.5 * len(allocators), 5), sharey=True, squeeze=False)
    devices = sorted({r["device"] for r in data["results"]})
    for ax, alloc in zip(axes[0], allocators):
        for name, device in itertools.product(IMPLS, devices):
            pts = sorted((r["n_rollouts"] * r["response_len"], r["median_s"]) for r in data["results"]
                         if (r["impl"], r["device"], r["allocator"]) == (name, device, alloc))
            if pts:
                style = ":" if name == "floor" else ("--" if device == "cuda" else "-")
                ax.plot(*zip(*pts), style, marker="o", label=name if len(devices) == 1 else f"{name} ({device})")
        ax.set(xscale="log", yscale="log", xlabel="n_rollouts x response_len (elements of the advantage tensor)")
        load = data["runs"][alloc]["load_avg_1m_before"]
        ax.set_title(f"allocator: {alloc} ({_env_text(alloc)})\nload avg {load:.1f} at start", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("median time per call (s)")
    m = data["machine"]
    thp = ", THP_MEM_ALLOC_ENABLE=1" if m["THP_MEM_ALLOC_ENABLE"] == "1" else ""
    fig.suptitle(f"Advantage estimators: cost vs batch size. {m['cpu']}, {m['cpu_count']} vCPU, "
                 f"{m['torch_threads']} torch thread(s), torch {m['torch']}{thp}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            n, length = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {item!r} is not N_ROLLOUTSxRESPONSE_LEN, e.g. 8192x1024") from None
        if n <= 0 or length <= 0 or n % GROUP_SIZE:
            raise argparse.ArgumentTypeError(f"size {item!r}: both > 0 and n_rollouts a multiple of {GROUP_SIZE}")
        sizes.append((n, length))
    return sizes


def _rerun(argv: list, allocator: str) -> dict:
    """This benchmark with the same arguments in a fresh process under ``allocator``'s settings; its data."""
    env = {**{k: v for k, v in os.environ.items() if k not in _malloc_env(os.environ)}, **ALLOCATORS[allocator]}
    if verl is None:
        env[_WITHOUT_VERL] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--allocator", allocator, "--json", out]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)  # its progress goes to our stderr
        if proc.returncode not in (0, 1):  # 1: a cross-check failed, which the merged report shows
            raise SystemExit(f"the {allocator} run failed (exit code {proc.returncode}): {' '.join(cmd)}")
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, fewer repeats (<= 3 min on 2 vCPUs)")
    grid.add_argument("--smoke", action="store_true", help="the smallest default size, 3 repeats (for the tests)")
    grid.add_argument("--sizes", type=_parse_sizes, help="N_ROLLOUTSxRESPONSE_LEN,..., e.g. 1024x1024,8192x4096")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cpu (and cuda if any)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ", ".join(IMPLS))
    parser.add_argument("--repeats", type=int, help="timed calls per vectorised impl (default 9; --quick 5; --smoke 3)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed calls per Python-loop impl")
    parser.add_argument("--slow-max-rollouts", type=int, default=8192, help="skip the Python loops above this size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steady on a shared "
                        "machine; 0 keeps torch's default)")
    parser.add_argument("--allocator", choices=["both", "current", *ALLOCATORS], help=f"glibc settings {ALLOCATORS} "
                        "(default both; --smoke or --device cuda: current); another runs in a fresh process")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write the log-log scaling plot (PNG), a panel per allocator")
    args = parser.parse_args(argv)

    sizes, repeats = ((QUICK_SIZES, 5) if args.quick else (DEFAULT_SIZES[:1], 3) if args.smoke else
                      (args.sizes or DEFAULT_SIZES, 9))
    repeats = args.repeats or repeats
    names = [x.strip() for x in args.impls.split(",") if x.strip()]
    unknown = sorted(set(names) - IMPLS.keys())
    if unknown:
        parser.error(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [
        "cpu" if args.device == "auto" else args.device]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    here = next((name for name, env in ALLOCATORS.items() if env == _malloc_env(os.environ)), "custom")
    # glibc's settings matter for CPU tensors only; --smoke is the tests' quick run
    wanted = args.allocator or ("current" if args.smoke or "cpu" not in devices else "both")
    wanted = list(ALLOCATORS) if wanted == "both" else [here if wanted == "current" else wanted]
    # what the re-runs are given: these arguments without the ones each sets itself
    own = ("--allocator", "--json", "--plot")
    passed = [arg for i, arg in enumerate(argv) if not arg.startswith(own) and (i == 0 or argv[i - 1] not in own)]

    data = {"results": [], "skipped": [], "checks": [], "machine": machine(), "runs": {}}
    for allocator in wanted:
        load_before = os.getloadavg()[0]
        if allocator == here:
            part = run(sizes, devices, repeats, min(args.slow_repeats, repeats), args.slow_max_rollouts, names)
            part["runs"] = {allocator: dict(env=_malloc_env(os.environ), load_avg_1m_before=load_before,
                                            load_avg_1m_after=os.getloadavg()[0])}
        else:
            part = _rerun(passed, allocator)
        for key in ("results", "skipped", "checks"):
            data[key] += [{**row, "allocator": allocator} for row in part[key]]
        data["runs"].update(part["runs"])
    print(f"machine: {data['machine']}\n{report(data)}")
    for path in filter(None, (args.json, args.plot)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(data, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(c["ok"] for c in data["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
