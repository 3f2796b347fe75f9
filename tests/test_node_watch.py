"""bnpo's node watch (bnpo/verl/watchdog.py): a run whose Ray node dies ends, naming the node, instead of waiting.

On a two-node Ray cluster on this machine (tests/ray_cluster.py: a CPU-only head, a worker node with the logical GPU),
an actor on the head stands in for verl's TaskRunner: it builds an object under the watch and waits, as verl 0.9.1's
v1 trainer waits for rollout samples, while the job's placement group (verl's workers) holds the worker node's GPU.
The worker node's raylet is then killed by pid. verl's own hang is in tests/test_ray_cluster.py's lost-node test.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import ray_cluster as rc

ray = pytest.importorskip("ray")
from bnpo.verl import watchdog  # noqa: E402

POLL_S, GRACE_S = 0.5, 3.0
LOST_S = 90  # from the kill to the error: Ray marks the node dead after its missed health checks (about 15-30 s)


class _Trainer:
    """What the watch holds a weak reference to."""


@ray.remote(num_cpus=0)
class _Runner:
    def train(self, blocked_in_c: bool) -> str:
        trainer = _Trainer()
        watchdog.watch(trainer, poll_s=POLL_S, grace_s=GRACE_S)
        if blocked_in_c:  # a lock acquired twice: the thread never runs Python again, so only the exit can end it
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()
        while True:  # verl's replay buffer polls TransferQueue with time.sleep
            time.sleep(0.1)


def test_the_watch_needs_ray_and_says_what_its_setting_wants(monkeypatch):
    if ray.is_initialized():
        pytest.skip("this process is connected to Ray")
    assert watchdog.watch(_Trainer(), poll_s=POLL_S) is None  # outside Ray: nothing to watch
    monkeypatch.setenv(watchdog.POLL_ENV, "five")
    with pytest.raises(ValueError, match=r"BNPO_NODE_WATCH_S='five' is not a number of seconds.*or 0 to turn them off"):
        watchdog.watch(_Trainer())
    monkeypatch.setenv(watchdog.POLL_ENV, "0")
    assert watchdog.watch(_Trainer()) is None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray import cloudpickle

    base = Path(tempfile.mkdtemp(prefix="bnpo_nw_", dir=os.environ.get("BNPO_RAY_TMP", "/tmp")))
    logs = tmp_path_factory.mktemp("node_watch")
    env = rc.ray_env()
    args, gcs, dashboard = rc.head_args(base / "head", num_cpus=2, num_gpus=0)
    head = rc.RayNode("head", args, base / "head", env, logs)
    worker = rc.RayNode("worker", rc.worker_args(gcs, base / "worker", num_cpus=2, num_gpus=1), base / "worker", env,
                        logs)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the nodes' workers cannot import this test module
    env_patch = pytest.MonkeyPatch()
    try:
        head.start()
        rc.wait_for_nodes(dashboard, [head], 1)
        worker.start()
        rc.wait_for_nodes(dashboard, [head, worker], 2)
        env_patch.setenv("RAY_AUTH_MODE", "disabled")  # the nodes' setting (rc.ray_env), for this module only
        ray.init(address=gcs, log_to_driver=False)
        yield worker, dashboard
    finally:
        ray.shutdown()
        env_patch.undo()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        for node in (worker, head):
            node.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not head.pids() and not worker.pids()


def _lose_the_worker_while_training(worker: rc.RayNode, dashboard: str, blocked_in_c: bool):
    if not worker.pids():
        worker.start()
    rc.wait_for_nodes(dashboard, [worker], 2)
    group = ray.util.placement_group([{"GPU": 1, "CPU": 1}])  # the head has no GPU: the bundle is on the worker node
    ray.get(group.ready(), timeout=60)
    (node_id,) = ray.util.placement_group_table(group)["bundles_to_node_id"].values()
    head_id = ray.get_runtime_context().get_node_id()
    runner = _Runner.options(scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
        head_id, soft=False)).remote()
    result = runner.train.remote(blocked_in_c)
    time.sleep(3 * POLL_S)  # the watch has seen the group's node
    os.kill(worker.raylet_pid(), signal.SIGKILL)
    t_kill = time.monotonic()
    with pytest.raises(ray.exceptions.RayError) as caught:
        ray.get(result, timeout=LOST_S)
    elapsed = time.monotonic() - t_kill
    worker.stop()
    ray.util.remove_placement_group(group)
    return node_id, caught.value, elapsed


@pytest.mark.slow
def test_a_lost_node_ends_the_run_with_an_error_naming_it(cluster):
    worker, dashboard = cluster
    node_id, error, elapsed = _lose_the_worker_while_training(worker, dashboard, blocked_in_c=False)
    print(f"error after {elapsed:.1f} s: {str(error)[-400:]}")
    assert isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, watchdog.RayNodeLost), error
    assert f"Ray node {node_id} (" in str(error.cause) and "resumes from the latest checkpoint" in str(error)
    assert elapsed < LOST_S
    # only the job's own placement groups count: the dead node is no other job's
    assert [n["NodeID"] for n in watchdog.lost_nodes(ray.get_runtime_context().get_job_id(), set())] in ([], [node_id])
    assert watchdog.lost_nodes("ffffffff", set()) == []
    assert [n["NodeID"] for n in watchdog.lost_nodes("ffffffff", {node_id})] == [node_id]


@pytest.mark.slow
def test_a_trainer_thread_that_cannot_take_the_error_is_ended_by_exiting(cluster):
    worker, dashboard = cluster
    node_id, error, elapsed = _lose_the_worker_while_training(worker, dashboard, blocked_in_c=True)
    print(f"error after {elapsed:.1f} s: {str(error)[-400:]}")
    assert isinstance(error, ray.exceptions.ActorDiedError), error
    assert elapsed < LOST_S + GRACE_S


@pytest.mark.slow
def test_the_watch_ends_with_its_trainer_and_is_one_per_trainer(cluster):
    trainer = _Trainer()
    thread = watchdog.watch(trainer, poll_s=POLL_S)
    assert thread.is_alive() and watchdog.watch(trainer) is thread  # a subclass's __init__ calling its base's
    del trainer
    thread.join(timeout=5)
    assert not thread.is_alive()
