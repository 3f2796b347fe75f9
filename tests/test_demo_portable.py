"""``--portable``: the demo's numbers do not depend on the code path the CPU makes the libraries take."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bnpo.demo import portable

# A short training run whose numbers (every metric of every step) are hashed: a different float anywhere changes it.
RUN = """
import hashlib, torch
from bnpo.demo.probe_loop import Settings, train, warm_start
torch.set_num_threads(1)
s = Settings(steps=20, warm_start_steps=40, prompts_per_step=8, eval_questions=16)
result = train(s, "bnpo", 0, warm_start(s, 0), on_step=lambda row: None)
print("HASH", hashlib.sha256(repr([sorted(row.items()) for row in result.rows]).encode()).hexdigest())
"""
ISA_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "GLIBC_TUNABLES")


def _hash(env: dict[str, str]) -> str:
    clean = {key: value for key, value in os.environ.items() if key not in ISA_ENV}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", RUN], env={**clean, **env}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("HASH"))


def test_the_flag_re_executes_with_the_portable_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    for key in portable.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    portable.ensure_portable(["--quick"])
    assert calls == [] and not portable.is_portable()
    portable.ensure_portable(["probe", "--portable"])
    (executable, argv, env), = calls
    assert argv == [sys.executable, "-m", "bnpo.demo", "probe", "--portable"]
    assert all(env[key] == value for key, value in portable.PORTABLE_ENV.items())
    for key, value in portable.PORTABLE_ENV.items():
        monkeypatch.setenv(key, value)
    portable.ensure_portable(["--portable"])  # already portable: runs on
    assert len(calls) == 1 and portable.is_portable() and portable.machine()["portable"] is True


@pytest.mark.slow  # five short training runs, about a minute and a half
def test_portable_numbers_do_not_depend_on_the_instruction_set():
    """On one machine: the portable run is the same whichever instruction sets MKL and glibc's libm may use, while
    the native run changes with torch's kernel choice (on an AVX-512 CPU torch picks other kernels than here)."""
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU's native kernels are already the default ones: no second code path to tell apart")
    native = _hash({})
    assert _hash({"ATEN_CPU_CAPABILITY": "default"}) != native  # the test can tell code paths apart
    runs = {_hash({**portable.PORTABLE_ENV, **extra}) for extra in (
        {}, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX"})}
    assert len(runs) == 1
