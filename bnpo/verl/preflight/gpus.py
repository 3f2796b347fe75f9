"""The GPUs a run will get: this machine's (nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES as Ray narrows them) or,
with a Ray cluster's GCS address in RAY_ADDRESS (as inside a Ray job), each alive node's. Pure Python; Ray is
imported only for a cluster. Whether there are enough of them is verl's check (``ResourcePoolManager``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

NVIDIA_SMI_TIMEOUT_S = 30


@dataclass(frozen=True)
class GPU:
    """``cuda_mib``: the total CUDA (and so vLLM) sees, nvidia-smi's memory.total less memory.reserved."""

    index: int
    name: str
    cuda_mib: int
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


def _smi(fields: str) -> tuple[list[list[str]], str]:
    try:
        out = subprocess.run([shutil.which("nvidia-smi") or "nvidia-smi", f"--query-gpu={fields}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed ({type(e).__name__})"
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()], ""


def local_gpus() -> Found:
    """This machine's GPUs as the run's processes will see them."""
    if shutil.which("nvidia-smi") is None:
        return Found([], None, "nvidia-smi: not found")
    rows, error = _smi("index,name,memory.total,memory.reserved,memory.used,driver_version")
    if error:  # drivers without memory.reserved: nvidia-smi's total, a few hundred MiB above CUDA's
        rows, error = _smi("index,name,memory.total,memory.used,driver_version")
        rows = [r[:3] + ["0"] + r[3:] for r in rows]
    if error:
        return Found([], None, "nvidia-smi failed", error)
    gpus = []
    for r in rows:
        try:
            reserved = int(float(r[3])) if r[3].replace(".", "", 1).isdigit() else 0  # [N/A] on some GPUs
            gpus.append(GPU(int(r[0]), r[1], int(float(r[2])) - reserved, int(float(r[4])), r[5]))
        except (ValueError, IndexError):
            continue
    listed, visible = len(gpus), os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return Found(gpus, None, f"nvidia-smi lists {listed}")
    wanted = [d.strip() for d in visible.split(",") if d.strip()]
    gpus = [g for g in gpus if str(g.index) in wanted] if all(d.isdigit() for d in wanted) else gpus[:len(wanted)]
    return Found(gpus, None, f"nvidia-smi lists {listed}, CUDA_VISIBLE_DEVICES={visible!r}")


def cluster_address() -> str:
    """RAY_ADDRESS when it names a cluster's GCS (a job's driver); '' for none or a dashboard's http address."""
    address = os.environ.get("RAY_ADDRESS", "")
    return "" if address.startswith(("http://", "https://")) else address


def find() -> Found:
    address = cluster_address()
    if not address:
        return local_gpus()
    try:
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        try:
            nodes = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
        finally:
            ray.shutdown()
    except Exception as e:  # noqa: BLE001 -- any connection failure is the message
        return Found([], [], "no cluster", f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({type(e).__name__}: {e})")
    return Found([], nodes, f"the Ray cluster at RAY_ADDRESS={address} has {len(nodes)} node(s) with {nodes} GPUs")
