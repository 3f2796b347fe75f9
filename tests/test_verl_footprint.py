"""What ``import verl`` brings into a user's process through bnpo's plugin: every verl process (driver, TaskRunner,
Ray workers) imports verl, and verl imports the plugin. The footprint is measured in a fresh process: the bnpo modules
it loads, the import machinery it adds (``sys.meta_path``, ``sys.path_hooks``), the verl modules it waits for (its
post-import hooks), the estimators it registers and the verl functions it replaces. It is the plugin, the core and
the verl layer a training run needs: the demo, the probe, the pre-flight, the rewards and the trainer extensions
(until a process imports the trainer they extend) are not loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from recipe_helpers import ROOT

# Prints the footprint of ``import verl`` as JSON (run by ``python -c`` in a fresh process).
FOOTPRINT = r"""
import json, os, sys, types
meta_path, path_hooks = list(sys.meta_path), list(sys.path_hooks)
import verl
modules = sorted(m for m in sys.modules if m.split(".")[0] in ("bnpo", "bnpo_probe"))  # what import verl loaded
finders = [f for f in sys.meta_path if f not in meta_path]
new_path_hooks = [h for h in sys.path_hooks if h not in path_hooks]
from verl.trainer.ppo import core_algos
import bnpo

ours = os.path.dirname(bnpo.__file__) + os.sep

def bnpos(fn):  # a function of bnpo's, or a wrapt wrapper whose wrapper is one
    try:
        fn = getattr(fn, "_self_wrapper", fn)
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    except Exception:  # a lazy proxy that cannot resolve here
        return False
    return isinstance(code, types.CodeType) and code.co_filename.startswith(ours)

def describe(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"

pending = set()  # the verl modules bnpo's post-import hooks wait for
try:
    from wrapt import importer  # wrapt's hooks: module name -> the hooks not run yet
    pending |= {name for name, hooks in importer._post_import_hooks.items()
                if name.startswith("verl") and any(bnpos(h) for h in hooks or ())}
except ImportError:
    pass
for finder in sys.meta_path:  # a finder of bnpo's own that keeps its callbacks by module name
    callbacks = getattr(finder, "callbacks", None)
    if isinstance(callbacks, dict) and type(finder).__module__.startswith("bnpo"):
        pending |= {name for name, fns in callbacks.items() if fns}
replaced = sorted(f"{name}.{attr}" for name, module in list(sys.modules.items()) if name.startswith("verl")
                  for attr, value in list(vars(module).items()) if callable(value) and bnpos(value))
print(json.dumps({
    "modules": modules,
    "meta_path": [describe(f) for f in finders],
    "path_hooks": [repr(h) for h in new_path_hooks],
    "pending": sorted(pending),
    "registered": sorted(n for n, fn in core_algos.ADV_ESTIMATOR_REGISTRY.items() if bnpos(fn)),
    "replaced": replaced,
}))
"""

# The verl layer a training process needs before it imports a trainer: the plugin and what it imports.
VERL_LAYER = {"plugin", "compat", "context", "estimators", "hooks", "metrics", "startup", "contract", "algo_config"}
# bnpo's post-import hooks: the trainer modules it extends (bnpo.verl.plugin.EXTENSIONS).
TRAINER_MODULES = {
    "verl.trainer.ppo.v1.trainer_base",
    "verl.trainer.ppo.ray_trainer",
    "verl.experimental.separation.ray_trainer",
    "verl.experimental.fully_async_policy.fully_async_trainer",
}


def footprint(python: str = sys.executable, cwd: str = str(ROOT)) -> dict:
    """The footprint of ``import verl`` in a fresh process of ``python`` run in ``cwd`` (verl's entry point loads
    bnpo: VERL_USE_EXTERNAL_MODULES is cleared)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES", "PYTHONPATH")}
    proc = subprocess.run([python, "-c", FOOTPRINT], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_modules(modules: list[str]) -> list[str]:
    """Those of ``modules`` that are not the plugin, the core or the verl layer a training run needs."""
    def needed(name: str) -> bool:
        parts = name.split(".")
        return (parts[0] == "bnpo" and (len(parts) == 1 or parts[1] == "core"
                                        or (parts[1] == "verl" and (len(parts) == 2 or parts[2] in VERL_LAYER))))
    return [name for name in modules if not needed(name)]


def check(found: dict) -> None:
    """The footprint is registration plus what the trainer hooks need."""
    assert "bnpo.verl.plugin" in found["modules"], found
    assert training_modules(found["modules"]) == [], found["modules"]
    assert found["registered"] == ["ad_bnpo", "bnpo"], found
    assert found["pending"] == sorted(TRAINER_MODULES), found  # the trainer extensions wait for their modules
    # the start-up check: verl's validate_config and the package's copy of it, nothing else of verl's replaced
    assert found["replaced"] == ["verl.utils.config.validate_config", "verl.utils.validate_config"], found
    # one post-import finder at most (bnpo's, or wrapt's that bnpo's hooks use); no path hook
    assert len(found["meta_path"]) <= 1 and all(f.startswith(("bnpo.", "wrapt.")) for f in found["meta_path"]), found
    assert found["path_hooks"] == [], found


def test_import_verl_loads_only_the_plugin_the_core_and_the_verl_layer():
    found = footprint()
    check(found)
    print(json.dumps(found, indent=1))  # the measured list (pytest -s shows it)


def test_the_checks_name_what_does_not_belong():
    modules = ["bnpo", "bnpo.core.beta", "bnpo.verl", "bnpo.verl.plugin", "bnpo.verl.startup"]
    assert training_modules(modules) == []
    extra = ["bnpo.demo", "bnpo_probe.loop", "bnpo.verl.preflight.run", "bnpo.rewards.score", "bnpo.verl.trainer_v1"]
    assert training_modules(modules + extra) == extra
