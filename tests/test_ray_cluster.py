"""bnpo training as a Ray job on a two-node Ray cluster on this machine, a lost node, and the resumed run.

The clusters are started as users start them (tests/ray_cluster.py): ``ray start --head`` and ``ray start
--address=...`` with its own temp dir and ports, both nodes in a Python environment **without bnpo** (as on nodes where
it is not installed), so bnpo reaches them only through the job's upload, with verl's entry points off
(``VERL_USE_EXTERNAL_PLUGINS=none``; the CPU port's verl plugin is named in ``VERL_USE_EXTERNAL_MODULES``). Each job
is ``scripts/submit_ray_job.sh`` running ``scripts/run_cpu_smoke.sh`` (verl's ``main_ppo``, adv_estimator=bnpo,
FSDP2 over gloo, vLLM's CPU build) on the job's cluster: 4 steps, a checkpoint every 2.

* The reference run (module fixture): a CPU-only head with no logical GPU and a worker node with one. The driver-side
  estimator runs in verl's TaskRunner on the head, the FSDP actor and the vLLM server on the worker node (Ray's node
  ids from its state API, matched to the pids in the job's log lines and to each node's own log folder).
* World size 2 across both nodes (one logical GPU each, ``trainer.nnodes=2``): killed by SIGKILL to the worker node's
  raylet after the step-2 checkpoint; the job fails within a bound, with Ray's error naming an actor of the lost node
  (by its id; the state API says it ran there); the node restarted, the same submit command resumes at step 3 and
  finishes, over the same questions as the reference run.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import ray_cluster as rc
from test_cpu_smoke import (_VLLM_ENGINE_START, _assert_bnpo_statistics, needs_cpu_port, parse_step_metrics,
                            weights_out_of_sync)

pytestmark = [
    pytest.mark.skipif(shutil.which("ray", path=rc.VENV_BIN) is None, reason="needs the ray CLI"),
    needs_cpu_port,
]

STEPS, SAVE_FREQ = 4, 2
JOB_TIMEOUT_S = 8 * 60  # one job: 4 steps took 156-173 s here (2 vCPUs), nearly all of it start-up
LOST_NODE_S = 180  # from the raylet's kill to the job's end: 8-21 s measured; bnpo's node watch bounds verl's hang
# The job's log line of a training step, from verl's TaskRunner (Ray's prefix names the process that printed it)
_TASK_RUNNER_STEP = re.compile(r"\((TaskRunnerV1) pid=(\d+)(?:, ip=[^)]*)?\)\S* step:(\d+) - ")
_VLLM_SERVER = re.compile(r"\(vLLMHttpServer pid=(\d+)(?:, ip=[^)]*)?\)")


def test_a_run_in_a_job_uses_the_jobs_cluster_with_the_cpu_environment_in_every_worker():
    """``launch overrides cluster``: no local instance (ray.init refuses num_gpus / num_cpus when it joins a cluster),
    and the CPU environment in ray.init's runtime env as strings, where Ray's workers on every node get it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import verl.trainer
    from bnpo_cpu_e2e.launch import CPU_ENV, CPU_ENV_DEFAULTS, CPU_OVERRIDES, cluster_overrides

    overrides = cluster_overrides()
    assert set(CPU_OVERRIDES) - set(overrides) == {"+ray_kwargs.ray_init.num_gpus=1", "ray_kwargs.ray_init.num_cpus=8",
                                                   "+ray_kwargs.ray_init.address=local"}
    with initialize_config_dir(config_dir=str(Path(verl.trainer.__file__).parent / "config"), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=[*overrides, "trainer.nnodes=2"])
    ray_init = OmegaConf.to_container(config.ray_kwargs.ray_init)
    assert ray_init["num_cpus"] is None and "num_gpus" not in ray_init and "address" not in ray_init
    assert ray_init["runtime_env"]["env_vars"] == {**CPU_ENV_DEFAULTS, **CPU_ENV}  # all strings: "1", "false"
    assert config.trainer.nnodes == 2  # the caller's settings win

    # in a job the smoke script takes these, and wants its folder on storage every node sees
    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "PYTHON": sys.executable}
    env.pop("BNPO_SMOKE_DIR", None)
    proc = subprocess.run(["bash", "scripts/run_cpu_smoke.sh"], cwd=rc.ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "set BNPO_SMOKE_DIR to an absolute folder every node" in proc.stderr, proc.stderr


def _training_args(ckpt: Path, *extra: str) -> list[str]:
    """The run script's arguments: its mode, then Hydra overrides (the same for every job of this module)."""
    return ["bnpo", f"trainer.total_training_steps={STEPS}",
            f"trainer.save_freq={SAVE_FREQ}", f"trainer.default_local_dir={ckpt}", *extra]


def _job_env(dashboard: str, smoke_dir: Path) -> dict[str, str]:
    """What the submitting shell sets: the cluster, the run script, where the model and data go (storage every node
    sees), and entry points off in the job (the CPU port's plugin then by name; bnpo's is added by the script)."""
    return rc.ray_env(RAY_ADDRESS=dashboard, RUN_SCRIPT="scripts/run_cpu_smoke.sh", BNPO_SMOKE_DIR=str(smoke_dir),
                      FORWARD_ENV="BNPO_SMOKE_DIR VERL_USE_EXTERNAL_PLUGINS", VERL_USE_EXTERNAL_PLUGINS="none",
                      VERL_USE_EXTERNAL_MODULES="bnpo_cpu_e2e.verl_plugin")


class Cluster:
    """A head and one worker node (tests/ray_cluster.py), stopped by pid at the end."""

    def __init__(self, base: Path, bin_dir: str, *, head_gpus: int):
        self.base = base
        env = rc.ray_env(bin_dir)
        head_args, self.gcs, self.dashboard = rc.head_args(base / "head", num_cpus=8, num_gpus=head_gpus)
        self.head = rc.RayNode("head", head_args, base / "head", env, base)
        self.worker = rc.RayNode("worker", rc.worker_args(self.gcs, base / "worker", num_cpus=8, num_gpus=1),
                                 base / "worker", env, base)

    def start(self) -> "Cluster":
        self.head.start()
        (head,) = rc.wait_for_nodes(self.dashboard, [self.head], 1)
        assert head["is_head_node"]
        self.head_id = head["node_id"]
        self.worker.start()
        self.worker_id = self._worker_id()
        return self

    def _worker_id(self, lost: str | None = None) -> str:
        """The worker node's id once the head and it are the alive nodes; after a restart, once Ray has marked the
        ``lost`` node dead (15-20 s after its raylet went) and the new one joined."""
        deadline = time.monotonic() + rc.NODE_UP_S
        while True:
            nodes = rc.wait_for_nodes(self.dashboard, [self.head, self.worker], 2)
            workers = [n["node_id"] for n in nodes if n["node_id"] not in (self.head_id, lost)]
            if workers:
                return workers[0]
            assert time.monotonic() < deadline, f"Ray still lists the lost node {lost} as alive"
            time.sleep(2)

    def restart_worker(self) -> str:
        lost = self.worker_id
        self.worker.stop()  # whatever of the lost node is left (a dead machine has no processes)
        self.worker.start()
        self.worker_id = self._worker_id(lost)
        return self.worker_id

    def stop(self) -> None:
        for node in (self.worker, self.head):
            node.stop()
        assert not self.head.pids() and not self.worker.pids(), "processes of the test's Ray nodes survived"

    def node_logs(self, node: rc.RayNode) -> Path:
        (session,) = sorted((node.temp_dir).glob("session_2*"))[-1:]
        return session / "logs"


@pytest.fixture(scope="module")
def node_bin(tmp_path_factory) -> str:
    return rc.python_without_bnpo(tmp_path_factory.mktemp("node_env") / "venv")


def _pids_in(out: str, pattern: re.Pattern) -> set[int]:
    return {int(m.group(2 if pattern is _TASK_RUNNER_STEP else 1)) for m in pattern.finditer(out)}


def _by_class(actors: list[dict]) -> dict[str, list[dict]]:
    """Actors by class name, without the scope verl's factory gives its colocated class
    ('create_colocated_worker_cls.<locals>.WorkerDict' -> 'WorkerDict')."""
    by_class: dict[str, list[dict]] = {}
    for actor in actors:
        by_class.setdefault(actor["class_name"].rsplit(".", 1)[-1], []).append(actor)
    return by_class


def _worker_log_pids(logs: Path) -> set[int]:
    """The pids of the Ray worker processes whose logs are in a node's log folder (worker-<id>-<job>-<pid>.out)."""
    return {int(p.stem.rsplit("-", 1)[1]) for p in logs.glob("worker-*.out")}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, node_bin):
    """A CPU-only head (no logical GPU) and a worker node with one; the job trains 4 steps uninterrupted."""
    base = Path(os.environ.get("BNPO_RAY_TMP", "/tmp"))  # short: Ray's unix sockets live under the temp dirs
    work = tmp_path_factory.mktemp("reference")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bnpo_rc1_", dir=base)), node_bin, head_gpus=0)
    try:
        t0 = time.monotonic()
        cluster.start()
        t_up = time.monotonic() - t0
        ckpt = work / "checkpoints"
        code, out = rc.submit(_job_env(cluster.dashboard, work / "smoke"), _training_args(ckpt), work / "job.log",
                              JOB_TIMEOUT_S)
        t_job = time.monotonic() - t0 - t_up
        actors = rc.job_actors(cluster.dashboard, rc.submission_id(out)) if code == 0 else []
        head_logs, worker_logs = cluster.node_logs(cluster.head), cluster.node_logs(cluster.worker)
        result = {"rc": code, "out": out, "ckpt": ckpt, "actors": actors, "head_id": cluster.head_id,
                  "worker_id": cluster.worker_id, "head_log_pids": _worker_log_pids(head_logs),
                  "worker_log_pids": _worker_log_pids(worker_logs), "node_bin": node_bin,
                  "worker_uploads": list(cluster.worker.temp_dir.glob(
                      "session_*/runtime_resources/working_dir_files/*/bnpo/verl/plugin.py")),
                  "timing": {"cluster_up_s": t_up, "job_s": t_job}}
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
    yield result


def _assert_job_succeeded(code: int, out: str) -> dict[int, dict[str, float]]:
    assert code == 0 and re.search(r"Job 'raysubmit_\w+' succeeded", out), f"job failed (rc={code}):\n{out[-5000:]}"
    return parse_step_metrics(out)


@pytest.mark.slow
def test_a_job_on_two_nodes_trains_bnpo_on_the_gpu_node_with_the_estimator_on_the_head(reference_run):
    run = reference_run
    print("timing", run["timing"])
    steps = _assert_job_succeeded(run["rc"], run["out"])
    assert sorted(steps) == list(range(1, STEPS + 1)), sorted(steps)
    _assert_bnpo_statistics(steps)
    assert all(math.isfinite(m["actor/pg_loss"]) and m["timing_s/gen"] > 0 for m in steps.values())
    assert _VLLM_ENGINE_START.search(run["out"]), "no vLLM engine start-up inside verl's vLLMHttpServer"

    # placement, by Ray's node ids: the head has no logical GPU, so the FSDP actor (one GPU bundle) goes to the worker
    # node, and verl's vLLM server with it; verl's TaskRunner, which computes the advantages, stays on the head
    head, worker = run["head_id"], run["worker_id"]
    by_class = _by_class(run["actors"])
    print({name: [(a["node_id"][:8], a["pid"]) for a in actors] for name, actors in by_class.items()},
          "head", head[:8], "worker", worker[:8])
    (runner,) = by_class["TaskRunnerV1"]
    assert runner["node_id"] == head, (runner, head)
    fsdp = by_class["WorkerDict"]  # verl's colocated actor/rollout/ref worker (the FSDP actor)
    servers = by_class["vLLMHttpServer"]
    assert len(fsdp) == 1 and len(servers) == 1
    assert fsdp[0]["node_id"] == worker and servers[0]["node_id"] == worker, (fsdp, servers, worker)
    # the estimator's statistics are printed by that TaskRunner process (its pid in Ray's prefix of every step line),
    # and each process logged into its own node's log folder
    assert _pids_in(run["out"], _TASK_RUNNER_STEP) == {runner["pid"]}
    assert _pids_in(run["out"], _VLLM_SERVER) == {servers[0]["pid"]}
    assert runner["pid"] in run["head_log_pids"] and runner["pid"] not in run["worker_log_pids"]
    assert {fsdp[0]["pid"], servers[0]["pid"]} <= run["worker_log_pids"] - run["head_log_pids"]

    # bnpo reached the worker node only through the job's upload: the node's Python has no bnpo, its copy of the
    # uploaded working_dir has, and the processes there imported bnpo's plugin (verl fails its import otherwise)
    probe = subprocess.run([f"{run['node_bin']}/python", "-c", "import verl, bnpo_cpu_e2e\nimport bnpo"],
                           cwd=Path(run["node_bin"]).parent, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 1 and "ModuleNotFoundError: No module named 'bnpo'" in probe.stderr, probe.stderr[-2000:]
    assert run["worker_uploads"], "no uploaded copy of bnpo on the worker node"


@pytest.mark.slow
def test_world_size_two_across_the_nodes_survives_a_lost_node_and_resumes(reference_run, node_bin, tmp_path):
    """FSDP2 over gloo across the head and the worker node, a vLLM replica on each; the worker node's raylet killed
    after the step-2 checkpoint; the node restarted and the same submit command run again."""
    if reference_run["rc"] != 0:
        pytest.fail(f"the uninterrupted reference run failed:\n{reference_run['out'][-3000:]}")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bnpo_rc2_", dir=os.environ.get("BNPO_RAY_TMP", "/tmp"))),
                      node_bin, head_gpus=1)
    ckpt = tmp_path / "checkpoints"
    env = _job_env(cluster.dashboard, tmp_path / "smoke")
    args = _training_args(ckpt, "trainer.nnodes=2", "trainer.n_gpus_per_node=1")
    timing = {}
    try:
        t0 = time.monotonic()
        cluster.start()
        timing["cluster_up_s"] = time.monotonic() - t0
        lost = cluster.worker_id

        # the job, until verl marks its step-2 checkpoint; then the worker node's raylet is killed
        t0 = time.monotonic()
        job = rc.start_submit(env, args, tmp_path / "killed.log")
        tracker = ckpt / "latest_checkpointed_iteration.txt"
        while not (tracker.exists() and tracker.read_text().strip() == str(SAVE_FREQ)):
            if job.poll() is not None:
                pytest.fail(f"the job ended (rc={job.returncode}) before its checkpoint:\n"
                            f"{rc.tail(tmp_path / 'killed.log', 80)}")
            if time.monotonic() - t0 > JOB_TIMEOUT_S:
                rc.stop_submit(job)
                pytest.fail(f"no step-{SAVE_FREQ} checkpoint after {JOB_TIMEOUT_S} s:\n"
                            f"{rc.tail(tmp_path / 'killed.log')}")
            time.sleep(0.2)
        timing["to_checkpoint_s"] = time.monotonic() - t0
        os.kill(cluster.worker.raylet_pid(), signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            job.wait(timeout=LOST_NODE_S)
        except subprocess.TimeoutExpired:
            rc.stop_submit(job)
            pytest.fail(f"the job still ran {LOST_NODE_S} s after its node was lost:\n"
                        f"{rc.tail(tmp_path / 'killed.log')}")
        timing["kill_to_job_end_s"] = time.monotonic() - t_kill
        killed = (tmp_path / "killed.log").read_text(errors="replace")
        assert job.returncode == 1 and re.search(r"Job 'raysubmit_\w+' failed", killed), killed[-5000:]
        # the job names the lost node: bnpo's node watch (its id, in the error or, when it had to end the trainer's
        # process, in the job's log before Ray's error), or Ray's error an actor of the node (by the actor's id; Ray's
        # state API says where it ran), whichever comes first
        error = killed.rsplit("Status message:", 1)[-1]
        killed_actors = rc.job_actors(cluster.dashboard, rc.submission_id(killed))
        named = {a["actor_id"]: a for a in killed_actors if a["actor_id"] in error}
        print("the job's error:", re.findall(r"(?:ray\.exceptions|bnpo\.verl\.watchdog)\.\w+: .*", error)[-1:],
              "names", [(a["class_name"], a["node_id"][:8], a["state"]) for a in named.values()], "lost", lost[:8],
              "placement", {k: [a["node_id"][:8] for a in v] for k, v in _by_class(killed_actors).items()})
        ended = re.search(r"(ray\.exceptions\.(ActorUnavailableError|ActorDiedError)|RayNodeLost): ", killed)
        assert ended, error[-3000:]
        if f"bnpo: Ray node {lost} (" not in killed:
            assert re.search(r"ray\.exceptions\.(ActorUnavailableError|ActorDiedError)", error), error[-3000:]
            assert named and all(a["node_id"] == lost for a in named.values()), (named, lost, error[-3000:])
        # nothing after the checkpoint was trained; the step-2 line may be lost with the node when verl's TaskRunner
        # ran there (Ray places it on either node when both have a GPU; it prints a step after saving it)
        killed_steps = parse_step_metrics(killed)
        assert 1 in killed_steps and set(killed_steps) <= {1, 2}, sorted(killed_steps)

        # the node comes back (same command, same temp dir), and the same submit command runs again
        t0 = time.monotonic()
        assert cluster.restart_worker() != lost
        timing["node_restart_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        code, out = rc.submit(env, args, tmp_path / "resumed.log", JOB_TIMEOUT_S)
        timing["resumed_job_s"] = time.monotonic() - t0
        steps = _assert_job_succeeded(code, out)
        actors = rc.job_actors(cluster.dashboard, rc.submission_id(out))
    finally:
        print("timing", timing, "reference", reference_run["timing"])
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)

    # it resumed from the checkpoint: steps 3 and 4 only (none trained twice, none lost), the data position continued
    assert sorted(steps) == [3, 4], sorted(steps)
    assert re.search(r"Resuming from \S*global_step_2, setting global step to 2", out), "verl did not resume"
    assert tracker.read_text().strip() == str(STEPS)
    for step in (SAVE_FREQ, STEPS):
        data = torch.load(ckpt / f"global_step_{step}" / "data.pt", weights_only=False)
        assert data["_num_yielded"] == step, (step, data)
    # world size 2 across both nodes: an FSDP rank and a vLLM replica on each, the actor's shards from both ranks
    nodes = {cluster.head_id, cluster.worker_id}
    by_class = _by_class(actors)
    for name in ("WorkerDict", "vLLMHttpServer"):
        placed = sorted(a["node_id"] for a in by_class[name])
        assert len(placed) == 2 and set(placed) == nodes, (name, placed, nodes)
    for step in (SAVE_FREQ, STEPS):
        shards = sorted(p.name for p in (ckpt / f"global_step_{step}" / "actor").glob("model_world_size_2_rank_*.pt"))
        assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"], (step, shards)
    # both replicas sampled with the actor's weights at every step, before the loss and after the resume
    for step, metrics in {**killed_steps, **steps}.items():
        assert not weights_out_of_sync(metrics), f"step {step}: vLLM's probabilities differ from the actor's"
    _assert_bnpo_statistics({**killed_steps, **steps})

    # the same questions as the uninterrupted run at every step (verl's data position, saved and resumed)
    reference = parse_step_metrics(reference_run["out"])
    for step, metrics in {**killed_steps, **steps}.items():
        assert metrics["bnpo/num_questions"] == reference[step]["bnpo/num_questions"], step


@pytest.mark.slow
def test_a_node_that_does_not_come_up_fails_the_wait_and_is_stopped(tmp_path):
    """No cluster at the address: the wait for the node fails within its bound (no hang), naming the node and its
    log, and stopping the node leaves none of its processes."""
    temp = Path(tempfile.mkdtemp(prefix="bnpo_rc0_", dir=os.environ.get("BNPO_RAY_TMP", "/tmp")))
    node = rc.RayNode("worker", rc.worker_args(f"127.0.0.1:{rc.free_port()}", temp / "worker", num_cpus=1, num_gpus=1),
                      temp / "worker", rc.ray_env(), tmp_path)
    t0 = time.monotonic()
    try:
        node.start()
        with pytest.raises(AssertionError, match=r"(did not have 1 nodes after 20 s|ray start for node worker exited)"):
            rc.wait_for_nodes(f"http://127.0.0.1:{rc.free_port()}", [node], 1, timeout=20)
        assert time.monotonic() - t0 < 60
    finally:
        node.stop()
        shutil.rmtree(temp, ignore_errors=True)
    assert not node.pids()
