"""Running the recipe's shell scripts from tests: a clean environment, DRY_RUN composition (cached
per session: each DRY_RUN composes the config as main_ppo does and runs verl's checks, about 40 s on 2 cores)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
HOME = "/home/researcher"
# every variable the scripts read, cleared so the caller's shell cannot leak into a test
SCRIPT_VARS = [
    line.split("=", 1)[0].strip()
    for line in (ROOT / "scripts/_common.sh").read_text().split("BNPO_ENV_KEYS=(", 1)[1].split(")", 1)[0].splitlines()
    if "=" in line
] + ["DATA_DIR", "DRY_RUN", "CONFIG_NAME", "RUN_SCRIPT", "BNPO_JOB_ENTRYPOINT", "RAY_ADDRESS", "FORWARD_ENV",
     "BNPO_SKIP_PREFLIGHT", "BNPO_SKIP_GPU_CHECK", "BNPO_PLAN_GPU", "CUDA_VISIBLE_DEVICES", "WANDB_API_KEY", "HF_TOKEN", "HF_HOME"]


def script_env(dry_run: bool = True, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HOME"] = HOME
    if dry_run:
        env["DRY_RUN"] = "1"
    env.update(extra)
    return env


def run_script(script: str, *overrides: str, dry_run: bool = True, timeout: int = 300,
               **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *overrides], env=script_env(dry_run, **env), cwd="/",
                          capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=None)
def _dry_run(script: str, overrides: tuple, env: tuple) -> subprocess.CompletedProcess:
    return run_script(script, *overrides, **dict(env))


def dry_run(script: str, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    """The script's DRY_RUN=1 (cached): the composed config on stdout, the checks and memory plan on stderr."""
    return _dry_run(script, tuple(overrides), tuple(sorted(env.items())))


def composed(script: str, *overrides: str, **env: str):
    """The Hydra config the script composes (DRY_RUN=1), as verl's main_ppo would run it; verl accepted it."""
    proc = dry_run(script, *overrides, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return OmegaConf.create(yaml.safe_load(proc.stdout))
