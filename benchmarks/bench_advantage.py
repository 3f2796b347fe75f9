"""Benchmark: the cost of the BNPO advantage against the published per-sample loop and verl's estimators.

The advantage runs on the driver every step over the whole batch, so its cost grows with
n_rollouts x response_len. Timed implementations (through verl's registry unless noted):

    bnpo             ours, get_adv_estimator_fn("bnpo")
    ad_bnpo          ours, two components ("acc", "format") read from non_tensor_batch
    reference_loop   the published code's structure (changyi7231/BNPO), re-implemented here: a Python loop
                     over samples, per-uid reward lists, then one torch.distributions.Beta per sample
    grpo, grpo_vectorized, rloo_vectorized   verl's (grpo: its per-sample Python loop)
    floor            not an estimator: response_mask copied to float32, the one (bs, L) write any
                     estimator has to do (the lower bound)

Inputs look like verl's: uuid4 uids (16 rollouts per question, shuffled as balance_batch leaves them), float32
token_level_rewards with the binary outcome on each response's last token, an int64 response_mask of varied lengths.

Method: per size, each implementation is called once to warm up, then the repeats go round-robin over them so
that load from other processes hits them alike; the median wall clock and calling-thread CPU time are reported.
Each allocator setting (ALLOCATORS: glibc as it comes, and one that reuses freed memory) runs in a process of its
own: verl's driver runs with the first, where every (bs, L) buffer of 32 MiB or more is fresh pages from the
kernel on every call, so the cost depends on how many such buffers an estimator allocates, not only on its passes.
Peak memory is measured in one more, untimed call:
  cpu  - peak bytes of the tensors allocated in the call (the torch profiler's memory events), plus the peak of
         Python / numpy allocations seen by tracemalloc (an upper bound; the inputs are not counted).
  cuda - torch.cuda.max_memory_allocated() during the call minus the memory allocated before it.
The Python loops (reference_loop, grpo) are skipped above --slow-max-rollouts; the output says so.

    python benchmarks/bench_advantage.py --json benchmarks/results/bench_cpu.json \
        --plot benchmarks/results/scaling_cpu.png           # full grid, both allocators (~5 min on 2 vCPUs)
    python benchmarks/bench_advantage.py --quick             # both allocators, ~1 min on 2 vCPUs
    python benchmarks/bench_advantage.py --smoke --json out.json   # smallest size, this process's allocator only
"""

from __future__ import annotations

import argparse
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
from tqdm import tqdm

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
# glibc's allocator settings, each run in a process of its own (glibc reads them at start-up); reuse: freed
# memory is kept and handed out again instead of every buffer above the mmap threshold being fresh pages.
ALLOCATORS = {"default": {}, "reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}}
QUICK_SIZES = [(1024, 1024), (8192, 1024)]
AD_BNPO_CONFIG = {"bnpo": {"components": ["acc", "format"]}}


@dataclass
class Batch:
    """One batch as verl hands it to the advantage estimator."""

    token_level_rewards: torch.Tensor  # (bs, L) float32, outcome reward on the last response token
    response_mask: torch.Tensor  # (bs, L) int64
    index: np.ndarray  # (bs,) object array of uid strings
    non_tensor_batch: dict  # "acc", "format": (bs,) float64 component rewards


def make_batch(n_rollouts: int, response_len: int, device: str, seed: int = 0) -> Batch:
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


def reference_loop(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
    max_weight: float = 1e6,
) -> tuple[torch.Tensor, torch.Tensor]:
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
        if means.numel() > 1:
            mu, var = means.mean(), means.var()
        else:
            mu, var = zero, scores.new_tensor(1.0)
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


@dataclass(frozen=True)
class Impl:
    name: str
    call: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    slow: bool = False  # a Python loop over samples


def _registry_call(name: str, **extra) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
    fn = get_adv_estimator_fn(name)
    return lambda b: fn(token_level_rewards=b.token_level_rewards, response_mask=b.response_mask, index=b.index, **extra)


def _ad_bnpo(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    fn = get_adv_estimator_fn("ad_bnpo")
    return fn(b.token_level_rewards, b.response_mask, index=b.index, config=AD_BNPO_CONFIG, non_tensor_batch=b.non_tensor_batch)


def _floor(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    out = b.response_mask.to(torch.float32, copy=True)
    return out, out


def _core_bnpo(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """bnpo without verl: ``bnpo.compute_bnpo_advantage``, which verl's registered estimator calls."""
    from bnpo import BNPOConfig, compute_bnpo_advantage

    advantages, returns, _ = compute_bnpo_advantage(b.token_level_rewards, b.response_mask, b.index, BNPOConfig())
    return advantages, returns


_REFERENCE = Impl("reference_loop", lambda b: reference_loop(b.token_level_rewards, b.response_mask, b.index), True)
if verl is not None:
    _IMPLS = (Impl("bnpo", _registry_call("bnpo", config=None)), Impl("ad_bnpo", _ad_bnpo), _REFERENCE,
              Impl("grpo", _registry_call("grpo"), slow=True), *(Impl(name, _registry_call(name)) for name in
                                                                 ("grpo_vectorized", "rloo_vectorized")),
              Impl("floor", _floor))
else:
    _IMPLS = (Impl("bnpo", _core_bnpo), _REFERENCE, Impl("floor", _floor))
IMPLS = {impl.name: impl for impl in _IMPLS}

# Pairs that must agree on every benchmark batch: (impl, impl it is checked against, rtol).
CHECKS = (("reference_loop", "bnpo", 1e-4), ("grpo", "grpo_vectorized", 1e-4))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(impl: Impl, batch: Batch, device: str) -> tuple[float, float]:
    """Wall-clock and this thread's CPU seconds of one call (CPU time leaves out time the OS gave other jobs)."""
    _sync(device)
    start, cpu = time.perf_counter(), time.thread_time()
    impl.call(batch)
    _sync(device)
    return time.perf_counter() - start, time.thread_time() - cpu


def peak_memory(impl: Impl, batch: Batch, device: str) -> int:
    """Bytes the call allocates at its peak, beyond its inputs (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        impl.call(batch)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    tracemalloc.start()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            impl.call(batch)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = torch_peak = 0
    for _, nbytes in events:
        live += nbytes
        torch_peak = max(torch_peak, live)
    return int(torch_peak + python_peak)


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest elementwise |got - want| / |want|, with |want| floored at 1e-6 of the largest |want|."""
    got, want = got.double(), want.double()
    floor = 1e-6 * float(want.abs().max().clamp_min(1e-12))
    return float(((got - want).abs() / want.abs().clamp_min(floor)).max())


def run(sizes, devices, repeats: int, slow_repeats: int, slow_max_rollouts: int, impl_names) -> dict:
    impls = [IMPLS[name] for name in impl_names]
    plan = [(device, n, length, [i for i in impls if not (i.slow and n > slow_max_rollouts)])
            for device in devices for n, length in sizes]
    skipped = [dict(impl=i.name, n_rollouts=n, response_len=length, device=device,
                    reason=f"Python per-sample loop; n_rollouts > --slow-max-rollouts={slow_max_rollouts}")
               for device, n, length, chosen in plan for i in impls if i not in chosen]
    calls = sum(len(c) * 2 + sum(slow_repeats if i.slow else repeats for i in c) for *_, c in plan)
    results, checks = [], []
    with tqdm(total=calls, unit="call", desc="advantage benchmark", file=sys.stderr) as bar:
        for device, n, length, chosen in plan:
            batch = make_batch(n, length, device)
            names = {impl.name for impl in chosen}
            checked = {x for pair in CHECKS if {pair[0], pair[1]} <= names for x in pair[:2]}
            outputs = {}
            for impl in chosen:  # warm-up; the outputs of checked pairs are kept for the cross-checks
                bar.set_postfix_str(f"{device} {n}x{length} {impl.name} (warm-up)")
                out = impl.call(batch)[0]
                if impl.name in checked:
                    outputs[impl.name] = out
                del out
                bar.update()
            for name, against, rtol in CHECKS:
                if name in outputs and against in outputs:
                    err = max_rel_err(outputs[name], outputs[against])
                    checks.append(dict(impl=name, against=against, n_rollouts=n, response_len=length,
                                       device=device, max_rel_err=err, ok=err <= rtol))
            del outputs
            times = {impl.name: [] for impl in chosen}
            for round_ in range(max(repeats, slow_repeats)):
                for impl in chosen:
                    if round_ < (slow_repeats if impl.slow else repeats):
                        bar.set_postfix_str(f"{device} {n}x{length} {impl.name}")
                        times[impl.name].append(timed(impl, batch, device))
                        bar.update()
            for impl in chosen:
                bar.set_postfix_str(f"{device} {n}x{length} {impl.name} (memory)")
                wall, cpu = zip(*times[impl.name])
                results.append(dict(impl=impl.name, n_rollouts=n, response_len=length, device=device,
                                    median_s=statistics.median(wall), median_cpu_s=statistics.median(cpu),
                                    peak_mem_bytes=peak_memory(impl, batch, device)))
                bar.update()
            del batch
    return {"results": results, "skipped": skipped, "checks": checks}


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` reports it, or the architecture where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        out = None
    names = [line.split(":", 1)[1].strip() for line in (out.stdout.splitlines() if out else [])
             if line.startswith("Model name:")]
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers depend on: versions, CPU, cores, threads and torch's huge-page switch."""
    info = dict(python=platform.python_version(), torch=torch.__version__, verl=verl and verl.__version__,
                cpu=cpu_model(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE", ""))
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _malloc_env(env) -> dict:
    """The glibc allocator settings in an environment (MALLOC_* variables, GLIBC_TUNABLES)."""
    return {k: v for k, v in env.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}


def current_allocator() -> str:
    """The name in ALLOCATORS of this process's allocator settings, or "custom"."""
    mine = _malloc_env(os.environ)
    return next((name for name, env in ALLOCATORS.items() if env == mine), "custom")


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _fmt_bytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def _env_text(allocator: str) -> str:
    return " ".join(f"{k}={v}" for k, v in ALLOCATORS.get(allocator, {}).items()) or "glibc as it comes"


def _ratio(row: dict, num: str, den: str, key: str = "median_s") -> str:
    return f"{row[num][key] / row[den][key]:.2f}" if num in row and den in row else "-"


def report(data: dict) -> str:
    """Markdown tables, the allocators side by side: medians, bnpo's ratios, the targets, the scaling exponent."""
    rows = defaultdict(dict)  # (device, n, L) -> allocator -> impl -> result
    for r in data["results"]:
        rows[(r["device"], r["n_rollouts"], r["response_len"])].setdefault(r["allocator"], {})[r["impl"]] = r
    allocators = [a for a in [*ALLOCATORS, "custom"] if any(a in by for by in rows.values())]
    names = [name for name in IMPLS if any(name in row for by in rows.values() for row in by.values())]
    def table(heads: list, cells_of: Callable[[dict], list]) -> list:
        out = ["| device | n_rollouts x L | allocator | " + " | ".join(heads) + " |",
               "|---|---|---|" + "---|" * len(heads)]
        for (device, n, length), by in rows.items():
            out += [f"| {device} | {n} x {length} | {alloc} | " + " | ".join(cells_of(row)) + " |"
                    for alloc, row in by.items()]
        return out

    lines = ["Median time per call (peak extra memory), each allocator setting in its own process "
             + "; ".join(f"{a}: {_env_text(a)}" for a in allocators) + ":", ""]
    lines += table(names, lambda row: [f"{_fmt_s(row[x]['median_s'])} ({_fmt_bytes(row[x]['peak_mem_bytes'])})"
                                       if x in row else "skipped" for x in names])
    ratios = [("bnpo", "grpo_vectorized"), ("bnpo", "floor"), ("ad_bnpo", "grpo_vectorized"), ("ad_bnpo", "floor"),
              ("reference_loop", "bnpo")]
    ratios = [(a, b) for a, b in ratios if a in names and b in names]
    lines += ["", "Ratios of medians, wall clock (in brackets: of the calling thread's CPU time, which leaves out "
              "time the OS gave other jobs):", ""]
    lines += table([f"{a} / {b}" for a, b in ratios],
                   lambda row: [f"{_ratio(row, a, b)} ({_ratio(row, a, b, 'median_cpu_s')})" for a, b in ratios])
    lines.append("")
    for s in data["skipped"]:
        # A per-sample loop costs about the same per sample at any batch size: extrapolate linearly.
        done = [r for r in data["results"] if (r["impl"], r["device"], r["response_len"], r["allocator"]) ==
                (s["impl"], s["device"], s["response_len"], s["allocator"])]
        guess = ""
        if done:
            last = max(done, key=lambda r: r["n_rollouts"])
            guess = f" (~{_fmt_s(last['median_s'] * s['n_rollouts'] / last['n_rollouts'])} per call, extrapolated)"
        lines.append(f"skipped {s['impl']} at {s['n_rollouts']} x {s['response_len']} on {s['device']} "
                     f"({s['allocator']}): {s['reason']}{guess}")
    for c in data["checks"]:
        verdict = "ok" if c["ok"] else "MISMATCH"
        lines.append(f"check {c['impl']} == {c['against']} at {c['n_rollouts']} x {c['response_len']} on {c['device']} "
                     f"({c['allocator']}): max rel err {c['max_rel_err']:.2e} ({verdict})")
    for alloc, target in rows.get(("cpu", 8192, 1024), {}).items():
        if not {"bnpo", "grpo_vectorized", "floor"} <= target.keys():
            continue
        vs_grpo = target["bnpo"]["median_s"] / target["grpo_vectorized"]["median_s"]
        vs_floor = target["bnpo"]["median_s"] / target["floor"]["median_s"]
        line = (f"\ntarget at cpu 8192 x 1024 ({alloc}): bnpo / grpo_vectorized = {vs_grpo:.2f} (want <= 1: "
                f"{'met' if vs_grpo <= 1 else 'NOT met'}); bnpo / floor = {vs_floor:.2f} (want <= 1.5: "
                f"{'met' if vs_floor <= 1.5 else 'NOT met'})")
        if "reference_loop" in target:
            speedup = target["reference_loop"]["median_s"] / target["bnpo"]["median_s"]
            line += f"; bnpo {speedup:.0f}x faster than reference_loop"
        lines.append(line)
    for alloc in allocators:
        for device in sorted({r["device"] for r in data["results"]}):
            pts = sorted((r["n_rollouts"] * r["response_len"], r["median_s"]) for r in data["results"]
                         if r["impl"] == "bnpo" and r["device"] == device and r["allocator"] == alloc)
            if len({x for x, _ in pts}) >= 2:
                slope = np.polyfit(np.log([x for x, _ in pts]), np.log([t for _, t in pts]), 1)[0]
                per_elem = ", ".join(f"{t / x * 1e9:.2f}" for x, t in pts)
                lines.append(f"bnpo on {device} ({alloc}): time ~ (n_rollouts x L)^{slope:.2f} over the sizes run; "
                             f"ns per (rollout x token): {per_elem}")
    return "\n".join(lines)


def plot(data: dict, path: str) -> None:
    """Log-log time against batch size, one panel per allocator setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allocators = [a for a in [*ALLOCATORS, "custom"] if any(r["allocator"] == a for r in data["results"])]
    fig, axes = plt.subplots(1, len(allocators), figsize=(7.5 * len(allocators), 5), sharey=True, squeeze=False)
    devices = sorted({r["device"] for r in data["results"]})
    m = data.get("machine", {})
    for ax, alloc in zip(axes[0], allocators):
        for name in IMPLS:
            for device in devices:
                pts = sorted((r["n_rollouts"] * r["response_len"], r["median_s"]) for r in data["results"]
                             if r["impl"] == name and r["device"] == device and r["allocator"] == alloc)
                if pts:
                    label = name if len(devices) == 1 else f"{name} ({device})"
                    style = ":" if name == "floor" else ("--" if device == "cuda" else "-")
                    ax.plot(*zip(*pts), style, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n_rollouts x response_len (elements of the advantage tensor)")
        run_info = data.get("runs", {}).get(alloc, {})
        load = run_info.get("load_avg_1m_before", float("nan"))
        ax.set_title(f"allocator: {alloc} ({_env_text(alloc)})\nload avg {load:.1f} at start", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("median time per call (s)")
    thp = ", THP_MEM_ALLOC_ENABLE=1" if m.get("THP_MEM_ALLOC_ENABLE") == "1" else ""
    fig.suptitle(f"Advantage estimators: cost vs batch size. {m.get('cpu', '?')}, {m.get('cpu_count', '?')} vCPU, "
                 f"{m.get('torch_threads', '?')} torch thread(s), torch {m.get('torch', '?')}{thp}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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


def _tagged(data: dict, allocator: str) -> dict:
    for key in ("results", "skipped", "checks"):
        for row in data[key]:
            row["allocator"] = allocator
    return data


def _rerun(argv: list, allocator: str) -> dict:
    """This benchmark with the same arguments in a fresh process under ``allocator``'s settings; its data."""
    env = {k: v for k, v in os.environ.items() if k not in _malloc_env(os.environ)}
    env.update(ALLOCATORS[allocator])
    if verl is None:
        env[_WITHOUT_VERL] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--allocator", allocator, "--json", out, "--no-report"]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)  # its progress bar goes to our stderr
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
    grid.add_argument("--sizes", type=_parse_sizes, help="comma-separated N_ROLLOUTSxRESPONSE_LEN, e.g. 1024x1024,8192x4096")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cpu, and cuda if present")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ", ".join(IMPLS))
    parser.add_argument("--repeats", type=int, help="timed calls per vectorised impl (default 9; --quick 5; --smoke 3)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed calls per Python-loop impl")
    parser.add_argument("--slow-max-rollouts", type=int, default=8192, help="skip the Python loops above this size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable on a shared machine; 0 keeps torch's default)")
    parser.add_argument("--allocator", choices=["both", "current", *ALLOCATORS],
                        help="glibc allocator settings to run under (default both; --smoke or --device cuda: current, "
                             f"this process's own); {', '.join(f'{k}: {v or {}}' for k, v in ALLOCATORS.items())}; a setting this "
                             "process does not have runs in a fresh process")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write the log-log scaling plot (PNG), a panel per allocator")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a re-run for another allocator
    args = parser.parse_args(argv)

    if args.quick:
        sizes, repeats = QUICK_SIZES, args.repeats or 5
    elif args.smoke:
        sizes, repeats = DEFAULT_SIZES[:1], args.repeats or 3
    else:
        sizes, repeats = args.sizes or DEFAULT_SIZES, args.repeats or 9
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
    here = current_allocator()
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
            part = _tagged(run(sizes, devices, repeats, min(args.slow_repeats, repeats), args.slow_max_rollouts, names),
                           allocator)
            part["runs"] = {allocator: dict(env=_malloc_env(os.environ), load_avg_1m_before=load_before,
                                            load_avg_1m_after=os.getloadavg()[0])}
        else:
            part = _rerun(passed, allocator)
        for key in ("results", "skipped", "checks"):
            data[key] += part[key]
        data["runs"].update(part["runs"])
    if not args.no_report:
        print(f"machine: {data['machine']}")
        print(report(data))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        if not args.no_report:
            print(f"wrote {args.json}")
    if args.plot:
        plot(data, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(c["ok"] for c in data["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
