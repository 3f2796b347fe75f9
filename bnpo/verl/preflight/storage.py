"""Where a run reads and writes: checkpoints (resume, disk room) and, on a Ray cluster, whether every node sees the
checkpoint folder, the data and a local model (verl checks the data and the model only where it opens them). Pure
Python; Ray only for ``cluster_check``.

verl saves ``<default_local_dir>/global_step_<N>/`` every ``save_freq`` steps and writes
``latest_checkpointed_iteration.txt`` last; with ``resume_mode=auto`` a run resumes from the step that file names,
resolving a relative ``default_local_dir`` against its working directory (``trainer_base.py``, ``_load_checkpoint``).
On a cluster each FSDP rank writes its shard on its own node while the trainer reads the tracker on its node, so the
folder must be storage every node sees; data is read by the trainer and the model by every worker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, Optional

TRACKER = "latest_checkpointed_iteration.txt"
MARKER_PREFIX = ".bnpo_shared_check_"


@dataclass
class Checkpoints:
    folder: str  # absolute
    latest: Optional[int]
    free_gib: Optional[float]


def checkpoints(default_local_dir: str, cwd: Optional[str] = None) -> Checkpoints:
    """The checkpoint folder as verl resolves it, its latest step and the free room of its file system."""
    folder = os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(str(default_local_dir))))
    latest = None
    try:
        with open(os.path.join(folder, TRACKER)) as f:
            latest = int(f.read().strip())
    except (OSError, ValueError):
        pass
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free / 2**30
    except OSError:
        free = None
    return Checkpoints(folder, latest, free)


def files(value: Any) -> list[str]:
    """The paths of a files setting (one path or a list), ~ expanded."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [os.path.expanduser(str(v)) for v in items]


def _node_sees(paths: list[str], marker: str) -> dict:
    return {"missing": [p for p in paths if not os.path.exists(p)], "marker": os.path.exists(marker)}


@dataclass
class SharedCheck:
    """What the nodes of a cluster see: how many answered, those that do not see the checkpoint folder, missing paths."""

    nodes: int
    unseen: list[str]
    missing: list[str]

    def problems(self, ckpt_folder: str) -> list[str]:
        out = [f"{where} does not see {ckpt_folder} as this node does (CKPT_DIR must be storage every node shares: each "
               "FSDP rank writes its checkpoint shard there)" for where in self.unseen]
        return out + [f"{missing} is missing (data and a local model must be on every node)" for missing in self.missing]


def cluster_check(address: str, ckpt_folder: str, paths: list[str]) -> SharedCheck:
    """On every alive node of the Ray cluster at ``address``: are ``paths`` there, and is a file written into
    ``ckpt_folder`` here visible there (shared storage)?"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(ckpt_folder, exist_ok=True)
    marker = os.path.join(ckpt_folder, MARKER_PREFIX + uuid.uuid4().hex)
    open(marker, "w").close()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    try:
        probe = ray.remote(num_cpus=0)(_node_sees)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        results = ray.get([
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths, marker)
            for n in nodes
        ])
    finally:
        ray.shutdown()
        os.remove(marker)
    check = SharedCheck(len(nodes), [], [])
    for node, seen in zip(nodes, results):
        where = f"node {node.get('NodeManagerAddress')}"
        if not seen["marker"]:
            check.unseen.append(where)
        check.missing += [f"{where}: {path}" for path in seen["missing"]]
    return check
