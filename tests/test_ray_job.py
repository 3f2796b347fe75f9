"""scripts/submit_ray_job.sh: what it refuses and forwards (no Ray needed), and against a real
(local, CPU, loopback) Ray cluster.

The slow test starts its own Ray head in its own temp dir and process group, submits a short job
through the script (BNPO_JOB_ENTRYPOINT replaces the training command with checks), and stops
exactly the processes it started. The job checks, in the driver and in a Ray worker process, that
`import verl` registers bnpo / ad_bnpo from the uploaded copy of the project with entry-point
discovery switched off (the way it works on cluster nodes where bnpo is not pip-installed); that
only the variables meant for it arrived (no secrets, no HF_HOME); where the run's checkpoints go;
that the run script's pre-flight asks the cluster for its GPUs and checks on every node that the checkpoint
folder is shared and the data is there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import ray_cluster as rc

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)

pytestmark = pytest.mark.skipif(shutil.which("ray", path=VENV_BIN + os.pathsep + os.environ.get("PATH", "")) is None,
                                reason="needs the ray CLI")

CHECK = r"""
import json, os, sys
import ray
import verl
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
import bnpo

def probe():
    import verl
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    import bnpo
    fns = {name: get_adv_estimator_fn(name).__module__ for name in ("bnpo", "ad_bnpo")}
    import verl.trainer.ppo.v1
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    hooked = getattr(PPOTrainer._compute_advantage, "_bnpo_wrapped", False)
    return {"estimators": fns, "v1_hook": hooked, "bnpo_file": bnpo.__file__, "cwd": os.getcwd()}

size = sum(f.stat().st_size for f in __import__("pathlib").Path(".").rglob("*") if f.is_file())
ray.init()
remote = ray.get(ray.remote(num_cpus=0)(probe).remote())
print("BNPO_JOB_RESULT " + json.dumps({
    "driver": probe(), "worker": remote, "tree_bytes": size,
    "has_venv": os.path.exists(".venv"), "has_git": os.path.exists(".git"),
    "has_recipe": os.path.exists("bnpo/recipe/bnpo_trainer.yaml"),
    "plugins_policy": os.environ.get("VERL_USE_EXTERNAL_PLUGINS"),
    "env": {name: os.environ.get(name) for name in
            ("WANDB_API_KEY", "HF_TOKEN", "HF_HOME", "MODEL_PATH", "CKPT_DIR", "PYTHON", "HOME")},
}))
"""
# after CHECK: the run script's dry run in the job (checkpoint folder; the pre-flight's shared-storage check on every
# node), then a real run (its pre-flight asks the cluster for its GPUs and stops on the data no node has)
IN_JOB = (
    "DRY_RUN=1 bash scripts/run_qwen_math_7b.sh 2>dry.err | python3 -c "
    "'import sys, yaml; print(\"BNPO_CKPT \" + yaml.safe_load(sys.stdin)[\"trainer\"][\"default_local_dir\"])'; "
    "grep -m1 'shared storage' dry.err | sed 's/^/BNPO_SHARED /'; "
    "grep -m1 'register in verl on every node' dry.err | sed 's/^/BNPO_NODES /'; "
    "grep -m1 'train.parquet is missing' dry.err | sed 's/^/BNPO_NODE_DATA /'; "
    "bash scripts/run_qwen_math_7b.sh 2>real.err; echo \"BNPO_REAL_RC $?\"; "
    "grep -m1 'preflight: GPUs: ' real.err | sed 's/^/BNPO_GPUS /'; "
    "grep -m1 '^error: node .*train.parquet is missing' real.err | sed 's/^/BNPO_PREFLIGHT /'"
)
SECRETS = {"WANDB_API_KEY": "secret-wandb-key", "HF_TOKEN": "secret-hf-token", "HF_HOME": "/only/on/my/laptop"}


@pytest.fixture()
def ray_head(tmp_path):
    """A Ray head on loopback with a dashboard (tests/ray_cluster.py), stopped by pid; yields its job-submission
    address, the environment to use it with, its temp dir and its GCS address."""
    temp_dir = Path(tempfile.mkdtemp(prefix="bnpo_ray_", dir="/tmp"))  # short: Ray's unix sockets live here
    env = rc.ray_env()
    args, gcs, address = rc.head_args(temp_dir, num_cpus=1, num_gpus=0)
    head = rc.RayNode("head", args, temp_dir, env, tmp_path)
    try:
        head.start()
        rc.wait_for_nodes(address, [head], 1)
        yield address, env, str(temp_dir), gcs
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_cluster_check_names_a_node_where_bnpo_does_not_import(ray_head, tmp_path):
    """The pre-flight's probe on every node fails there, not here, and the node is named: its workers see a bnpo
    that does not import (a PYTHONPATH entry ahead of the installed one, as a stale copy on a node would be)."""
    _, env, _, gcs = ray_head
    broken = tmp_path / "stale" / "bnpo"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a stale bnpo on this node')\n")
    script = (
        "import json, sys; from bnpo.verl.preflight import storage; "
        f"check = storage.cluster_check({gcs!r}, {str(tmp_path / 'ckpt')!r}, [], "
        f"runtime_env={{'env_vars': {{'PYTHONPATH': {str(broken.parent)!r}}}}}); print(json.dumps(check.bnpo)); "
        f"good = storage.cluster_check({gcs!r}, {str(tmp_path / 'ckpt')!r}, []); print(json.dumps(good.bnpo))"
    )
    # run from tmp_path: Ray puts the driver's directory first on its workers' path (here a checkout would shadow)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad, good = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert len(bad) == 1 and re.match(r"node \S+: bnpo does not import there \(ImportError: a stale bnpo", bad[0]), bad
    assert good == []


@pytest.mark.slow
def test_submit_ray_job_registers_plugin_on_workers(ray_head, tmp_path):
    address, env, temp_dir, _ = ray_head
    ckpt_dir = str(tmp_path / "shared_ckpt")
    env = {**env, "RAY_ADDRESS": address, "BNPO_JOB_ENTRYPOINT": f"python3 -c {shlex.quote(CHECK)} && {IN_JOB}",
           # entry points off in the job: registration must come from the runtime env alone
           "FORWARD_ENV": "VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_PLUGINS": "none",
           "MODEL_PATH": "/models/forwarded", "CKPT_DIR": ckpt_dir, "PYTHON": sys.executable, **SECRETS}
    deadline = time.monotonic() + 180
    while True:
        proc = subprocess.run(["bash", str(ROOT / "scripts/submit_ray_job.sh")], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=400)
        out = proc.stdout + proc.stderr
        # a fresh head answers before its job agent is up; nothing was submitted then
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            break
        time.sleep(3)
    if proc.returncode != 0:
        logs = sorted(Path(temp_dir).glob("session_*/logs/dashboard_agent.log"))
        agent_log = logs[-1].read_text()[-3000:] if logs else "(no dashboard agent log)"
        pytest.fail(f"ray job submit failed:\n{out[-4000:]}\n--- dashboard agent log ---\n{agent_log}")
    line = next((ln for ln in out.splitlines() if ln.startswith("BNPO_JOB_RESULT ")), None)
    assert line is not None, out[-4000:]
    result = json.loads(line.split(" ", 1)[1])
    print(json.dumps(result, indent=1))

    assert result["plugins_policy"] == "none"
    for where in ("driver", "worker"):
        probe = result[where]
        assert probe["estimators"] == {"bnpo": "bnpo.verl.estimators", "ad_bnpo": "bnpo.verl.estimators"}, where
        assert probe["v1_hook"] is True, (where, probe)  # bnpo's step in every v1 trainer mode
        # the job imports the uploaded copy, not this checkout
        assert not probe["bnpo_file"].startswith(str(ROOT) + os.sep), (where, probe)
    assert result["driver"]["bnpo_file"].startswith(result["driver"]["cwd"])
    assert result["has_recipe"] and not result["has_venv"] and not result["has_git"]
    assert result["tree_bytes"] < 5_000_000, result["tree_bytes"]
    # only what was meant for the job arrived: no secrets, not this machine's HF_HOME
    job_env = result["env"]
    assert job_env["MODEL_PATH"] == "/models/forwarded"
    assert (job_env["WANDB_API_KEY"], job_env["HF_TOKEN"], job_env["HF_HOME"]) == (None, None, None)
    assert not any(secret in out for secret in SECRETS.values() if secret != SECRETS["HF_HOME"])
    # nothing machine-local: not the submitting machine's interpreter; checkpoints where CKPT_DIR says
    assert job_env["PYTHON"] is None and job_env["CKPT_DIR"] == ckpt_dir
    ckpt = next(ln for ln in out.splitlines() if ln.startswith("BNPO_CKPT ")).split(" ", 1)[1]
    assert ckpt == ckpt_dir
    shared = next(ln for ln in out.splitlines() if ln.startswith("BNPO_SHARED ")).split(" ", 1)[1]
    assert shared == f"bnpo preflight: shared storage: every node of the cluster (1) sees {ckpt_dir}"
    # bnpo imports and registers on every node, from the job's uploaded copy (plugin discovery is off there)
    nodes = next(ln for ln in out.splitlines() if ln.startswith("BNPO_NODES ")).split(" ", 1)[1]
    assert nodes == "bnpo preflight: bnpo: its estimators register in verl on every node of the cluster (1)"
    # each node is asked for the data the run reads: here none was prepared (a real run would stop)
    node_data = next(ln for ln in out.splitlines() if ln.startswith("BNPO_NODE_DATA ")).split(" ", 1)[1]
    assert re.search(r"not on this machine \(a run here would stop\): node \S+: /\S+/math_lighteval/train.parquet is "
                     r"missing", node_data), node_data
    # inside the job the pre-flight asks the cluster for its GPUs (RAY_ADDRESS is its GCS there; verl counts them)
    gpus = next(ln for ln in out.splitlines() if ln.startswith("BNPO_GPUS ")).split(" ", 1)[1]
    assert "the Ray cluster at RAY_ADDRESS=" in gpus and "has 1 node(s) with [0] GPUs" in gpus, gpus
    # and a real run stops there, before verl starts, on the data no node has
    assert re.search(r"^BNPO_REAL_RC 2$", out, re.M), out[-3000:]
    preflight = next(ln for ln in out.splitlines() if ln.startswith("BNPO_PREFLIGHT ")).split(" ", 1)[1]
    assert "math_lighteval/train.parquet is missing (data and a local model must be on every node)" in preflight


def _submit(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RAY_ADDRESS", "CKPT_DIR", "NNODES", "FORWARD_ENV", "DRY_RUN", "BNPO_JOB_ENTRYPOINT",
                          "WANDB_API_KEY", "HF_TOKEN", "HF_HOME", "MODEL_PATH", "PYTHON", "VERL_USE_EXTERNAL_MODULES")}
    clean["PATH"] = VENV_BIN + os.pathsep + clean.get("PATH", "")
    return subprocess.run(["bash", str(ROOT / "scripts/submit_ray_job.sh"), *args], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_submit_requires_ray_address():
    proc = _submit(CKPT_DIR="/shared/ckpt")
    assert proc.returncode == 2
    assert "RAY_ADDRESS" in proc.stderr


def test_every_job_needs_an_absolute_shared_ckpt_dir():
    """No default computed on the submitting machine: a job's workers may run on other nodes than its driver."""
    for nodes in ("1", "2"):
        proc = _submit(NNODES=nodes, RAY_ADDRESS="http://10.0.0.1:8265")
        assert proc.returncode == 2 and proc.stderr.startswith("error: set CKPT_DIR to an absolute folder")
        assert "every node" in proc.stderr
    ok = _submit("trainer.default_local_dir=/shared/ckpt", DRY_RUN="1", BNPO_JOB_ENTRYPOINT="true",
                 RAY_ADDRESS="http://10.0.0.1:8265")
    assert ok.returncode == 0, ok.stderr  # as an override too
    relative = _submit(CKPT_DIR="ckpt/run1", RAY_ADDRESS="http://10.0.0.1:8265")
    assert relative.returncode == 2 and "CKPT_DIR=ckpt/run1 must be an absolute path" in relative.stderr


def _runtime_env(proc: subprocess.CompletedProcess) -> dict:
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("bnpo: runtime env "))
    return json.loads(line.split(" ", 3)[3])


def test_only_named_variables_are_forwarded_and_secrets_are_masked():
    entry = {"DRY_RUN": "1", "BNPO_JOB_ENTRYPOINT": "true", "RAY_ADDRESS": "http://10.0.0.1:8265"}
    plain = _submit(**entry, **SECRETS, NNODES="2", CKPT_DIR="/shared/ckpt", MODEL_PATH="/models/q",
                    PYTHON=sys.executable)
    assert plain.returncode == 0, plain.stderr
    env_vars = _runtime_env(plain)["env_vars"]
    assert env_vars == {"NNODES": "2", "CKPT_DIR": "/shared/ckpt", "MODEL_PATH": "/models/q",
                        "VERL_USE_EXTERNAL_MODULES": "bnpo.verl.plugin"}
    named = _submit(**entry, **SECRETS, FORWARD_ENV="WANDB_API_KEY HF_HOME", CKPT_DIR="/shared/ckpt")
    env_vars = _runtime_env(named)["env_vars"]
    assert env_vars["WANDB_API_KEY"] == env_vars["HF_HOME"] == "***" and "HF_TOKEN" not in env_vars
    assert "forwarding WANDB_API_KEY, HF_HOME (FORWARD_ENV)" in named.stderr
    assert SECRETS["WANDB_API_KEY"] not in named.stderr + named.stdout
    # the submit command reads the runtime env from a file: no values on its command line
    submit = next(ln for ln in named.stderr.splitlines() if ln.startswith("ray job submit"))
    assert "--runtime-env /" in submit and "--runtime-env-json" not in submit


def test_other_verl_plugin_modules_are_kept_before_bnpos():
    """Where entry points are off, other verl plugins (here the CPU port's, tests/test_ray_cluster.py) are loaded by
    name too: the job imports them, then bnpo's plugin, once."""
    entry = {"DRY_RUN": "1", "BNPO_JOB_ENTRYPOINT": "true", "RAY_ADDRESS": "http://10.0.0.1:8265",
             "CKPT_DIR": "/shared/ckpt"}
    for given, expected in (("my_plugin", "my_plugin,bnpo.verl.plugin"),
                            ("bnpo.verl.plugin, a.plugin,b.plugin", "a.plugin,b.plugin,bnpo.verl.plugin"),
                            ("", "bnpo.verl.plugin")):
        proc = _submit(**entry, VERL_USE_EXTERNAL_MODULES=given)
        assert proc.returncode == 0, proc.stderr
        assert _runtime_env(proc)["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == expected, given


def test_ckpt_dir_reaches_the_composed_config():
    proc = _submit(DRY_RUN="1", RAY_ADDRESS="http://10.0.0.1:8265", CKPT_DIR="/shared/ckpt/run1", HOME="/home/u")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import yaml

    assert yaml.safe_load(proc.stdout)["trainer"]["default_local_dir"] == "/shared/ckpt/run1"


def _documented_runtime_env() -> dict:
    """The runtime env docs/verl.md gives for shipping bnpo with a job (the section's YAML block)."""
    import yaml

    section = (ROOT / "docs/verl.md").read_text().split("### Shipping bnpo with a Ray job\n", 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


REGISTERED = ("import verl, bnpo; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; "
              "print('PROBE', bnpo.__file__, [n for n in ('bnpo', 'ad_bnpo') if n in R])")


def test_the_documented_runtime_env_ships_bnpo_with_a_job(tmp_path):
    documented = _documented_runtime_env()
    assert documented["working_dir"] == "."
    assert documented["env_vars"] == {"VERL_USE_EXTERNAL_MODULES": "bnpo.verl.plugin"}
    # what scripts/submit_ray_job.sh sends: the same variable, and at least the documented excludes
    script = _runtime_env(_submit(DRY_RUN="1", BNPO_JOB_ENTRYPOINT="true", RAY_ADDRESS="http://10.0.0.1:8265",
                                  CKPT_DIR="/shared/ckpt"))
    assert documented["env_vars"].items() <= script["env_vars"].items()
    assert set(documented["excludes"]) <= set(script["excludes"])
    readme = (ROOT / "README.md").read_text()
    assert "VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin" in readme
    assert "docs/verl.md#shipping-bnpo-with-a-ray-job" in readme
    # a process of such a job: bnpo only as the uploaded copy on sys.path, entry points off (the copy declares none)
    copy = tmp_path / "working_dir"
    shutil.copytree(ROOT / "bnpo", copy / "bnpo", ignore=shutil.ignore_patterns("__pycache__"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    for env_vars, expected in ((documented["env_vars"], "['bnpo', 'ad_bnpo']"), ({}, "[]")):
        proc = subprocess.run([sys.executable, "-c", REGISTERED], cwd=copy, capture_output=True, text=True,
                              env={**base, "VERL_USE_EXTERNAL_PLUGINS": "none", **env_vars}, timeout=240)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
        assert line is not None, proc.stderr[-3000:]
        _, bnpo_file, registered = line.split(" ", 2)
        assert bnpo_file.startswith(str(copy) + os.sep) and registered == expected, (env_vars, line)
