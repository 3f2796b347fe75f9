"""GPU pre-flight check of the run scripts (scripts/_common.sh: bnpo_gpu_preflight).

Exits 0 when the GPUs the run asks for are there, else 2 with one message saying what is missing
and what to run instead. Without RAY_ADDRESS it counts this machine's GPUs (nvidia-smi, narrowed by
CUDA_VISIBLE_DEVICES), as verl will start a local Ray instance on it; with RAY_ADDRESS (a cluster's
GCS address, as inside a Ray job) it counts the GPUs of each node of that cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys


def _recipe_value(config: str, key: str, default: int) -> int:
    try:
        import yaml

        with open(config) as f:
            value = (yaml.safe_load(f) or {}).get("trainer", {}).get(key)
        return int(value) if value is not None else default
    except (OSError, ValueError, TypeError, ImportError):
        return default


def local_gpus() -> tuple[int, str]:
    """(number of GPUs this process may use, how it was found)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, "nvidia-smi: not found"
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"nvidia-smi -L failed ({type(e).__name__})"
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    if listing.returncode != 0:
        return 0, f"nvidia-smi -L failed: {(listing.stderr or listing.stdout).strip()[:200]}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        allowed = len([d for d in visible.split(",") if d.strip()])
        return min(count, allowed), f"nvidia-smi lists {count}, CUDA_VISIBLE_DEVICES={visible!r}"
    return count, f"nvidia-smi lists {count}"


def cluster_gpus(address: str) -> tuple[list[int], str]:
    """(GPUs of each alive node of the Ray cluster at ``address``, description)."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    try:
        nodes = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
    return nodes, f"the Ray cluster at RAY_ADDRESS={address} has {len(nodes)} node(s) with {nodes} GPUs"


def problem(nnodes: int, per_node: int) -> str:
    """'' if the GPUs are there, else what is missing."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address and not address.startswith(("http://", "https://")):
        try:
            nodes, found = cluster_gpus(address)
        except Exception as e:  # noqa: BLE001 -- any connection failure is the message
            return f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({type(e).__name__}: {e})"
        enough = sum(1 for n in nodes if n >= per_node)
        return "" if enough >= nnodes else f"{found}: fewer than {nnodes} node(s) with {per_node} GPUs"
    if nnodes > 1:
        return (f"{nnodes} nodes need a Ray cluster: start one and submit with scripts/submit_ray_job.sh, "
                "or set RAY_ADDRESS to its GCS address")
    count, found = local_gpus()
    return "" if count >= per_node else f"this machine has {count} usable GPU(s) ({found})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--nnodes", default="")
    parser.add_argument("--gpus-per-node", default="")
    parser.add_argument("--script", default="scripts/run_qwen_math_7b.sh")
    args = parser.parse_args(argv)
    try:  # verl's ppo_trainer defaults where the recipe leaves them out
        nnodes = int(args.nnodes or _recipe_value(args.config, "nnodes", 1))
        per_node = int(args.gpus_per_node or _recipe_value(args.config, "n_gpus_per_node", 8))
    except ValueError:
        print(f"error: trainer.nnodes={args.nnodes!r} / trainer.n_gpus_per_node={args.gpus_per_node!r} must be "
              "whole numbers", file=sys.stderr)
        return 2
    missing = problem(nnodes, per_node)
    if not missing:
        return 0
    script = args.script  # as the user typed it ($0 of the run script)
    print(
        f"error: this run needs {nnodes} node(s) x {per_node} GPU(s) (trainer.nnodes, trainer.n_gpus_per_node), "
        f"but {missing}.\n"
        f"  See the run's whole config without GPUs:  DRY_RUN=1 bash {script}\n"
        "  Run verl's trainer with bnpo on this CPU:  bash scripts/run_cpu_smoke.sh\n"
        "  Fewer GPUs: N_GPUS_PER_NODE=<n>; skip this check: BNPO_SKIP_GPU_CHECK=1",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
