"""Where a run reads and writes: checkpoints (resume, disk room) and, on a Ray cluster, whether every node sees the
checkpoint folder, the data and a local model (verl checks the data and the model only where it opens them), and
whether bnpo imports and registers there. Pure Python; Ray only for ``cluster_check``.

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
from dataclasses import dataclass, field
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


def _bnpo_problems_here() -> list[str]:
    """What would stop a bnpo run in a verl worker of this node (a Ray task cannot even load this function where
    bnpo does not import)."""
    from ..startup import node_problems

    return node_problems()


@dataclass
class SharedCheck:
    """What the nodes of a cluster see: how many answered, those that do not see the checkpoint folder, missing
    paths, and per node what stops bnpo there."""

    nodes: int
    unseen: list[str]
    missing: list[str]
    bnpo: list[str] = field(default_factory=list)

    def problems(self, ckpt_folder: str) -> list[str]:
        out = [f"{where} does not see {ckpt_folder} as this node does (CKPT_DIR must be storage every node shares: each "
               "FSDP rank writes its checkpoint shard there)" for where in self.unseen]
        out += [f"{missing} is missing (data and a local model must be on every node)" for missing in self.missing]
        return out + self.bnpo


def cluster_check(address: str, ckpt_folder: str, paths: list[str], runtime_env: Optional[dict] = None) -> SharedCheck:
    """On every alive node of the Ray cluster at ``address``: are ``paths`` there, is a file written into
    ``ckpt_folder`` here visible there (shared storage), and do bnpo and its plugin load there? ``runtime_env``: the
    probes' Ray runtime environment (default: the job's, as the run's workers get it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(ckpt_folder, exist_ok=True)
    marker = os.path.join(ckpt_folder, MARKER_PREFIX + uuid.uuid4().hex)
    open(marker, "w").close()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False,
             **({"runtime_env": runtime_env} if runtime_env else {}))
    def node_sees(paths: list[str], marker: str) -> dict:  # nested: Ray ships it by value, so no node needs bnpo
        import os

        return {"missing": [p for p in paths if not os.path.exists(p)], "marker": os.path.exists(marker)}

    try:
        sees, bnpo = ray.remote(num_cpus=0)(node_sees), ray.remote(num_cpus=0, max_retries=0)(_bnpo_problems_here)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        on = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes]
        results = ray.get([sees.options(scheduling_strategy=s).remote(paths, marker) for s in on])
        pending = [bnpo.options(scheduling_strategy=s).remote() for s in on]
        found = []
        for ref in pending:  # one at a time: a node where bnpo does not import fails its own task only
            try:
                found.append(ray.get(ref))
            except Exception as err:  # noqa: BLE001 -- Ray's task error wraps the node's ImportError
                found.append([f"bnpo does not import there ({str(err).strip().splitlines()[-1]})"])
    finally:
        ray.shutdown()
        os.remove(marker)
    check = SharedCheck(len(nodes), [], [])
    for node, seen, problems in zip(nodes, results, found):
        where = f"node {node.get('NodeManagerAddress')}"
        if not seen["marker"]:
            check.unseen.append(where)
        check.missing += [f"{where}: {path}" for path in seen["missing"]]
        check.bnpo += [f"{where}: {problem}" for problem in problems]
    return check
