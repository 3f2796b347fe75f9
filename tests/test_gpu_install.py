"""The GPU install (bnpo[gpu], scripts/install_gpu.sh, docs/gpu.md) against verl's own package metadata, on a CPU:
what can be checked without downloading CUDA wheels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from bnpo.verl import compat
from bnpo.verl.preflight import stack
from recipe_helpers import ROOT

DOC = (ROOT / "docs/gpu.md").read_text()
SCRIPT = (ROOT / "scripts/install_gpu.sh").read_text()


def _extra(name: str) -> dict[str, Requirement]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {Requirement(r).name: Requirement(r) for r in extras[name]}


def test_the_gpu_extra_is_verls_recipe_extras_at_the_tested_version():
    gpu = _extra("gpu")
    assert gpu["verl"].extras == set(stack.RECIPE_EXTRAS) and str(gpu["verl"].specifier) == f"=={compat.TESTED_VERL}"
    assert gpu["math-verify"] == _extra("rewards")["math-verify"]  # the paper's reward
    assert gpu["pebble"] == _extra("rewards")["pebble"]  # its worker pool


def test_verls_recipe_extras_pin_the_whole_stack_and_the_docs_name_those_pins():
    pins = stack.wanted()  # from the installed verl's metadata
    assert set(pins) == set(stack.CHECKED), pins  # torch, vllm, transformers and, through fsdp, flash-attn
    for dist, version in pins.items():
        assert f"{dist} {version}" in DOC, f"docs/gpu.md does not name {dist} {version}"
    assert f"torch=={pins['torch']}" in SCRIPT and f"flash-attn=={pins['flash-attn']}" in SCRIPT
    assert f"MIN_DRIVER={stack.MIN_DRIVER}" in SCRIPT and f"driver {stack.MIN_DRIVER}" in DOC


def test_the_recipe_stack_is_verl_0_9_1s_pins_and_stands_in_where_verl_declares_none():
    assert stack.wanted([]) == stack.RECIPE_STACK  # verl 0.9.0: no vllm / fsdp extras
    if not stack.verl_pins():
        pytest.skip("this verl declares no GPU stack (0.9.0): nothing to compare the recipe's table with")
    assert stack.verl_pins() == stack.RECIPE_STACK


def test_the_pins_are_read_through_verls_own_extra_references():
    """verl's fsdp extra names flash-attn through another of its extras; a new pin there is followed."""
    requires = [
        'verl[verl-core]; extra == "vllm"', 'torch==9.1.0; extra == "vllm"', 'vllm==9.2.0; extra == "vllm"',
        'transformers==9.3.0; extra == "vllm"', 'verl[flash-attn-cu999]; extra == "fsdp"',
        'flash-attn==9.4.0; extra == "flash-attn-cu999"', 'flash-attn==1.0; extra == "megatron"',
    ]
    assert stack.wanted(requires) == {"torch": "9.1.0", "vllm": "9.2.0", "transformers": "9.3.0", "flash-attn": "9.4.0"}


def test_pip_resolves_the_gpu_extra_of_this_project(tmp_path):
    """pip reads bnpo[gpu] as the three requirements above (metadata only: --dry-run, --no-deps, no download)."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                           "--ignore-installed", "--quiet", "--report", str(report), f"{ROOT}[gpu]"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (install,) = json.loads(report.read_text())["install"]
    assert install["requested_extras"] == ["gpu"]
    gpu = sorted(r for r in install["metadata"]["requires_dist"] if r.endswith('extra == "gpu"'))
    assert [Requirement(r).name for r in gpu] == ["math-verify", "pebble", "verl"]


def test_stack_check_names_each_difference_and_whether_it_is_certain_to_stop_the_run():
    pins = {"torch": "2.11.0", "vllm": "0.24.0", "flash-attn": "2.8.3", "transformers": "5.9.0"}
    good = {"torch": {"version": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True}, "vllm": {"version": "0.24.0"},
            "flash-attn": {"version": "2.8.3"}, "transformers": {"version": "5.9.0"}}
    assert stack.problems(pins, good) == []
    bad = {**good, "vllm": {"version": "0.23.1"}, "flash-attn": {"error": "ImportError: undefined symbol"}}
    who, whose = stack.pinned_by()  # ("verl 0.9.1", "verl's"); on verl 0.9.0, which declares no stack, the recipe's
    assert stack.problems(pins, bad) == [(f"vllm 0.23.1 is installed; {who} pins 0.24.0", False),
                                         (f"flash-attn 2.8.3 ({whose} pin) does not import: ImportError: undefined symbol", True)]
    assert stack.problems(pins, {**bad, "vllm": good["vllm"]}, need_flash_attn=False) == []


def test_install_script_refuses_an_old_driver_before_installing_anything(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '550.54.15'\n")
    smi.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts/install_gpu.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", "VIRTUAL_ENV": str(tmp_path / "venv")})
    assert proc.returncode == 2 and "NVIDIA driver 550.54.15" in proc.stderr and "need driver 580 or newer" in proc.stderr
    assert "[2/5]" not in proc.stderr  # stopped before pip ran
    assert re.search(r"docs/gpu\.md 'Older drivers'", proc.stderr)


def _run_install(tmp_path, driver: str, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    """install_gpu.sh with a fake nvidia-smi and a fake ``python`` that logs each command (no flash-attn installed)."""
    log = tmp_path / "python.log"
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\necho '{driver}'\n")
    (tmp_path / "python").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in "-c import flash_attn"*) exit 1;; esac\nexit 0\n')
    for tool in ("nvidia-smi", "python"):
        (tmp_path / tool).chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts/install_gpu.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", "VIRTUAL_ENV": str(tmp_path / "venv"), **env})
    return proc, log.read_text().splitlines() if log.exists() else []


def test_install_script_builds_flash_attn_with_its_build_tools_after_torch(tmp_path):
    proc, calls = _run_install(tmp_path, "580.65.06")
    assert proc.returncode == 0, proc.stderr
    pip = [c.removeprefix("-m pip install ") for c in calls if c.startswith("-m pip install")]
    torch_at = pip.index("torch==2.11.0")
    build = next(i for i, c in enumerate(pip) if "--no-build-isolation flash-attn==2.8.3" in c)
    tools = next(i for i, c in enumerate(pip) if c.split()[:1] == ["setuptools"])
    # without isolation flash-attn's setup.py imports these from the venv: they must be there first
    assert torch_at < tools < build and {"wheel", "packaging", "ninja"} <= set(pip[tools].split())
    assert pip[build + 1] == "-e .[gpu]" and calls[-1] == "-m bnpo.verl.preflight.stack"


def test_install_script_takes_a_prebuilt_flash_attn_wheel_and_an_old_driver_when_told(tmp_path):
    wheel = "/wheels/flash_attn-2.8.3+cu130torch2.11-cp311-cp311-linux_x86_64.whl"
    proc, calls = _run_install(tmp_path, "550.54.15", FLASH_ATTN_WHEEL=wheel, BNPO_ALLOW_OLD_DRIVER="1")
    assert proc.returncode == 0 and "NVIDIA driver 550.54.15" in proc.stderr, proc.stderr
    assert f"-m pip install --no-deps {wheel}" in calls
    assert not any("--no-build-isolation" in c for c in calls)  # nothing built
