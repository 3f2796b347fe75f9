"""Where a run reads and writes: the checkpoint folder as verl resolves it (resume, disk room) and, on a Ray cluster,
whether every node sees it, the data and a local model, and whether bnpo loads there (why: docs/gpu.md, "Checkpoints
and resume" and "Ray jobs and shared storage"). Ray only for ``cluster_check``.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

TRACKER = "latest_checkpointed_iteration.txt"
MARKER_PREFIX = ".bnpo_shared_check_"


def check(cfg: Any, each: Optional[float], cluster: str, rep) -> None:
    """The checkpoint folder (resume, room for checkpoints of ``each`` GiB) and, on a ``cluster``, what every node sees."""
    t = cfg.trainer
    folder = os.path.abspath(os.path.expanduser(str(t.default_local_dir)))  # as verl does (trainer_base.py _load_checkpoint)
    try:
        with open(os.path.join(folder, TRACKER)) as f:
            state = f"resumes from global_step_{int(f.read().strip())}"
    except (OSError, ValueError):
        state = "no checkpoint yet: a fresh start"
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free / 2**30
    except OSError:
        free = None
    keep, save, resume = t.get("max_actor_ckpt_to_keep", None), int(t.get("save_freq", -1)), t.get("resume_mode", "auto")
    rep.say(f"checkpoints: {folder} (trainer.default_local_dir; resume_mode={resume}" + (f": {state}" if resume ==
            "auto" else "") + ")" + (f", about {each:.0f} GiB each (fp32 parameters and Adam moments)" if each else ""))
    if save <= 0:
        rep.problem("trainer.save_freq <= 0: no checkpoints, a crash loses the run (SAVE_FREQ=<steps>)", certain=False)
    elif each and free is not None and free < each * (max(2, int(keep)) if keep else 1):
        rep.problem(f"{folder} has {free:.0f} GiB free; each checkpoint takes about {each:.0f} GiB and "
                    f"{'verl keeps ' + str(keep) + ' (and writes one before deleting one)' if keep else 'all are kept'}",
                    certain=False)
    if not cluster:
        return
    if not os.path.isabs(str(t.default_local_dir)):
        rep.problem(f"trainer.default_local_dir={t.default_local_dir} is relative: on a Ray cluster it lands in Ray's "
                    "per-job folder of each node. Set CKPT_DIR to an absolute folder every node shares.")
    if rep.errors:
        return
    model = str(cfg.actor_rollout_ref.model.path)
    paths = [cfg.data.get("train_files"), cfg.data.get("val_files"), model if model.startswith(("/", "~")) else None]
    paths = [os.path.expanduser(str(p)) for v in paths if v is not None for p in ([v] if isinstance(v, str) else v)]
    shared = cluster_check(cluster, folder, paths)
    if not shared.unseen:
        rep.say(f"shared storage: every node of the cluster ({shared.nodes}) sees {folder}")
    if not shared.bnpo:
        rep.say(f"bnpo: its estimators register in verl on every node of the cluster ({shared.nodes})")
    for where in shared.unseen:
        rep.problem(f"{where} does not see {folder} as this node does (CKPT_DIR must be storage every node shares: each "
                    "FSDP rank writes its checkpoint shard there)", machine=True)
    for text in [f"{m} is missing (data and a local model must be on every node)" for m in shared.missing] + shared.bnpo:
        rep.problem(text, machine=True)


@dataclass
class SharedCheck:
    """How many nodes answered, those that do not see the checkpoint folder, missing paths, what stops bnpo where."""

    nodes: int
    unseen: list[str]
    missing: list[str]
    bnpo: list[str] = field(default_factory=list)


def node_problems() -> list[str]:
    """What would stop any bnpo / ad_bnpo run in a verl process here, whatever its config ([] when nothing): an
    unsupported verl, a failed part of bnpo's plugin, an estimator not bnpo's. The cluster check's Ray task per node."""
    import verl  # noqa: F401  (loads bnpo's plugin, as in every verl worker)

    from ...core.config import ESTIMATORS
    from .. import compat, hooks, startup

    problems = []
    for check in (compat.check_version, *(functools.partial(startup.check_registered, n) for n in ESTIMATORS)):
        try:
            check()
        except (ValueError, compat.VerlChanged) as err:
            problems.append(str(err))
    return problems + hooks.failures()


def cluster_check(address: str, ckpt_folder: str, paths: list[str], runtime_env: Optional[dict] = None) -> SharedCheck:
    """On every alive node of the Ray cluster at ``address``: are ``paths`` there, is a file written into
    ``ckpt_folder`` here visible there (shared storage), and does bnpo's plugin load there (``node_problems``)?
    ``runtime_env``: the probes' Ray runtime environment (default: the job's, as the run's workers get it)."""
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
        # node_problems goes by reference: where bnpo does not import, its task fails
        sees, bnpo = ray.remote(num_cpus=0)(node_sees), ray.remote(num_cpus=0, max_retries=0)(node_problems)
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
