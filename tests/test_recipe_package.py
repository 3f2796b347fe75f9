"""bnpo as a user installs it (it is not on PyPI: from a clone, a git URL or a wheel built from either): a wheel built
from this checkout, installed into a fresh venv, run from a folder outside the checkout (the dependencies come from
this venv, bnpo from the wheel alone). The README's install commands and its check, then the recipe it ships."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from pathlib import Path

import pytest
from packaging.requirements import Requirement

from recipe_helpers import ROOT
from test_verl_footprint import check, footprint


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """bnpo's wheel, built from this checkout's files as git sees them (a stale ``build/`` folder would add files that
    are gone)."""
    dist, source = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("source")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), str(source)], check=True, capture_output=True, timeout=600)
    (found,) = dist.glob("bnpo-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple:
    """(python of a fresh venv with bnpo's wheel, a folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert "bnpo/recipe/bnpo_trainer.yaml" in zipfile.ZipFile(wheel).namelist()
    # verl finds bnpo through this entry point; the wheel must carry it, not only this checkout's editable install
    (entry_points,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "[verl.plugins]\nbnpo = bnpo.verl.plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, capture_output=True, timeout=300)
    python = str(tmp / "venv" / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this venv's packages (torch, omegaconf, verl) after the fresh venv's: a plain path, so its .pth files (this
    # checkout's editable install) are not read
    with open(os.path.join(site, "zz_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    (tmp / "elsewhere").mkdir()
    return python, str(tmp / "elsewhere")


def _run(installed: tuple, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    python, cwd = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _readme_install_commands() -> list[list[str]]:
    """The commands of the README's "Install next to your verl" block, split as the shell would (comments dropped)."""
    section = (ROOT / "README.md").read_text().split("## Install next to your verl", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readme_installs_bnpo_from_a_clone_a_git_url_or_a_wheel_not_from_pypi():
    """No bnpo is published on PyPI: a bare ``pip install bnpo`` would fail, or install someone else's package."""
    targets = [arg for command in _readme_install_commands() if command[:2] == ["pip", "install"]
               for arg in command[2:] if not arg.startswith("-")]
    assert targets
    for target in targets:
        assert target.startswith((".", "/")) or " @ git+" in target or target.endswith(".whl"), target


def test_an_installed_wheel_passes_the_readmes_install_check(installed):
    """The README's check after installing, run in the fresh venv: verl finds both estimators through the wheel's
    entry point, and they are the wheel's."""
    (check,) = [command for command in _readme_install_commands() if command[0] == "python"]
    proc = _run(installed, *check[1:])
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
    where = _run(installed, "-c", "import verl; from verl.trainer.ppo.core_algos import get_adv_estimator_fn as f; "
                                  "print(f('bnpo').__module__, f('ad_bnpo').__code__.co_filename)")
    assert where.stdout.split()[0] == "bnpo.verl.estimators", where.stderr[-2000:]
    assert where.stdout.split()[1].startswith(os.path.dirname(os.path.dirname(installed[0]))), where.stdout


def test_the_wheel_is_bnpo_alone_and_needs_what_the_plugin_imports(wheel):
    """``pip install bnpo`` brings the package and only what a training process imports: the probe, the CPU port and
    the benchmarks stay in the repository; a dependency outside the extras is one the core or the verl layer imports."""
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"bnpo"}
    assert not [name for name in names if "probe" in name or "portable" in name], names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    plain = [Requirement(line.split(":", 1)[1]).name for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line]
    layer = [p for folder in ("core", "verl") for p in (ROOT / "bnpo" / folder).rglob("*.py") if "preflight" not in p.parts]
    for name in plain:
        assert any(re.search(rf"^\s*(import|from) {name}\b", p.read_text(), re.M) for p in layer), name


def test_import_verl_in_an_installed_bnpo_loads_the_plugin_core_and_verl_layer_only(installed):
    check(footprint(*installed))


def test_an_installed_bnpo_plans_the_recipe_it_ships(installed):
    where = _run(installed, "-c", "import bnpo.recipe; print(bnpo.recipe.CONFIG_FILE)")
    assert where.returncode == 0 and where.stdout.startswith(os.path.dirname(os.path.dirname(installed[0]))), where
    proc = _run(installed, "-m", "bnpo.verl.preflight.memory_plan", "--gpus", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "memory plan (an estimate): Qwen/Qwen2.5-Math-7B (7.62B parameters) on 4 GPU(s)" in proc.stdout


def test_an_installed_bnpo_dry_runs_the_recipe_it_ships(installed):
    """The pre-flight's default config is the packaged recipe, which Hydra composes with verl's ppo_trainer."""
    proc = _run(installed, "-m", "bnpo.verl.preflight", "--dry-run", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nalgorithm:\n" in proc.stdout and "verl's validate_config and bnpo's check_run_config passed" in proc.stderr
