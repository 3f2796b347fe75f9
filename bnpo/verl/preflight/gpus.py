"""The GPUs a run will get: this machine's (nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES) or, with a Ray cluster's
GCS address in RAY_ADDRESS (as inside a Ray job), each alive node's. Pure Python; Ray is imported only for a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

NVIDIA_SMI_TIMEOUT_S = 30
MIN_DRIVER = (580, 0)  # CUDA 13 builds (torch 2.11.0, vllm 0.24.0 as verl 0.9.1 pins them) need driver 580 or newer


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_mib: int
    used_mib: int
    driver: str


@dataclass
class Found:
    """What was found: ``gpus`` on this machine, or ``nodes`` (GPUs per alive node) of a Ray cluster."""

    gpus: list[GPU]
    nodes: Optional[list[int]]
    how: str
    error: str = ""

    @property
    def per_node(self) -> int:
        """GPUs every node with GPUs has (this machine's count without a cluster). Nodes without GPUs, such as a
        cluster's CPU-only head, run no worker of the trainer's resource pool, so they do not lower it."""
        if self.nodes is None:
            return len(self.gpus)
        return min((n for n in self.nodes if n > 0), default=0)


_QUERY = "index,name,memory.total,memory.used,driver_version"


def local_gpus() -> Found:
    """This machine's GPUs as the run's processes will see them."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Found([], None, "nvidia-smi: not found")
    try:
        out = subprocess.run([smi, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Found([], None, "nvidia-smi failed", f"nvidia-smi failed ({type(e).__name__})")
    if out.returncode != 0:
        return Found([], None, "nvidia-smi failed", f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}")
    gpus = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 5:
            try:
                gpus.append(GPU(int(cells[0]), cells[1], int(float(cells[2])), int(float(cells[3])), cells[4]))
            except ValueError:
                continue
    listed = len(gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [d.strip() for d in visible.split(",") if d.strip()]
        gpus = [g for g in gpus if str(g.index) in wanted] if all(d.isdigit() for d in wanted) else gpus[:len(wanted)]
        return Found(gpus, None, f"nvidia-smi lists {listed}, CUDA_VISIBLE_DEVICES={visible!r}")
    return Found(gpus, None, f"nvidia-smi lists {listed}")


def cluster_gpus(address: str) -> Found:
    """GPUs of each alive node of the Ray cluster at ``address`` (a GCS address)."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    try:
        nodes = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
    return Found([], nodes, f"the Ray cluster at RAY_ADDRESS={address} has {len(nodes)} node(s) with {nodes} GPUs")


def cluster_address() -> str:
    """RAY_ADDRESS when it names a cluster's GCS (a job's driver); '' for none or a dashboard's http address."""
    address = os.environ.get("RAY_ADDRESS", "")
    return "" if address.startswith(("http://", "https://")) else address


def find() -> Found:
    address = cluster_address()
    if not address:
        return local_gpus()
    try:
        return cluster_gpus(address)
    except Exception as e:  # noqa: BLE001 -- any connection failure is the message
        return Found([], [], "no cluster", f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({type(e).__name__}: {e})")


def count_problem(found: Found, nnodes: int, per_node: int) -> str:
    """'' if the GPUs the run asks for are there, else what is missing."""
    if found.error:
        return found.error
    if found.nodes is not None:
        enough = sum(1 for g in found.nodes if g >= per_node)
        return "" if enough >= nnodes else f"{found.how}: fewer than {nnodes} node(s) with {per_node} GPUs"
    if nnodes > 1:
        return (f"{nnodes} nodes need a Ray cluster: start one and submit with scripts/submit_ray_job.sh, "
                "or set RAY_ADDRESS to its GCS address")
    have = len(found.gpus)
    return "" if have >= per_node else f"this machine has {have} usable GPU(s) ({found.how})"


def driver_problem(found: Found) -> str:
    """'' if every GPU's driver is new enough for CUDA 13 builds, else which is not."""
    for gpu in found.gpus:
        try:
            version = tuple(int(x) for x in gpu.driver.split(".")[:2])
        except ValueError:
            continue
        if version < MIN_DRIVER:
            return (f"GPU {gpu.index} ({gpu.name}) runs NVIDIA driver {gpu.driver}; torch 2.11.0 and vllm 0.24.0 (the "
                    f"versions verl 0.9.1 pins) are CUDA 13 builds and need driver {MIN_DRIVER[0]} or newer "
                    "(docs/gpu.md: 'Older drivers')")
    return ""
