"""Run ``python -m bnpo.demo ...`` as a user would, in a fresh process (shared by the demo and probe tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_demo(*args: str, cwd: Path, timeout: int = 900) -> str:
    """The command's output (stdout and stderr); fails the test with its tail if it exits with an error."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnpo.demo", *args, "--no-progress"],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout
