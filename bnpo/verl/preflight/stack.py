"""The GPU stack verl pins for this recipe, read from verl's package metadata, against what a fresh interpreter
imports (so that a broken CUDA library cannot take the caller down). verl pins it in two extras, ``vllm`` (torch,
vllm, transformers) and ``fsdp`` (flash-attn, through its extra ``flash-attn-cu130torch211``); the recipe needs both.
A package that does not import, or a torch that cannot use the GPUs nvidia-smi lists, stops a real run for certain;
a version other than verl's pin only may (as another verl version only warns in ``bnpo.verl.compat``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from typing import Optional

from packaging.requirements import Requirement

RECIPE_EXTRAS = ("vllm", "fsdp")
CHECKED = {"torch": "torch", "vllm": "vllm", "flash-attn": "flash_attn", "transformers": "transformers"}
CUDA_MAJOR = "13"  # the CUDA of the builds verl 0.9.1 pins (torch 2.11.0, vllm 0.24.0 from PyPI)
MIN_DRIVER = 580  # what CUDA 13 builds need (without NVIDIA's cuda-compat)
IMPORT_TIMEOUT_S = 300
# The stack where the installed verl declares none (verl 0.9.0 has no vllm / fsdp extras): verl 0.9.1's, which
# bnpo[gpu] installs (tests/test_gpu_install.py checks this table against 0.9.1).
RECIPE_STACK = {"torch": "2.11.0", "vllm": "0.24.0", "transformers": "5.9.0", "flash-attn": "2.8.3"}


def verl_pins(requires: Optional[list[str]] = None) -> dict[str, str]:
    """{distribution: pinned version} of verl's recipe extras for the packages ``CHECKED`` names ({} without them)."""
    requires = [Requirement(r) for r in ((metadata.requires("verl") or []) if requires is None else requires)]
    pins, extras, seen = {}, list(RECIPE_EXTRAS), set(RECIPE_EXTRAS)
    while extras:  # following verl's self-references (verl[flash-attn-cu130torch211])
        extra = extras.pop(0)
        for req in (r for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})):
            if req.name == "verl":
                extras += sorted(req.extras - seen)
                seen |= req.extras
            spec = next(iter(req.specifier), None)
            if req.name in CHECKED and spec is not None and spec.operator == "==":
                pins[req.name] = spec.version
    return pins


def wanted(requires: Optional[list[str]] = None) -> dict[str, str]:
    """The GPU stack a run needs: verl's recipe-extra pins, or ``RECIPE_STACK`` where verl declares none."""
    return verl_pins(requires) or dict(RECIPE_STACK)


def pinned_by() -> tuple[str, str]:
    """Who pins ``wanted()``'s versions, for the messages: (``"verl 0.9.1"``, ``"verl's"``) or the recipe's."""
    version = metadata.version("verl")
    if verl_pins():
        return f"verl {version}", "verl's"
    return f"the recipe (verl 0.9.1's stack; verl {version} declares none)", "the recipe's"


_PROBE = """
import json, sys
out = {}
for dist, module in json.loads(sys.argv[1]).items():
    try:
        m = __import__(module)
        out[dist] = {"version": getattr(m, "__version__", None)}
        if module == "torch":
            out[dist].update(cuda=m.version.cuda, cuda_available=m.cuda.is_available())
            if m.version.cuda and not out[dist]["cuda_available"]:
                try:
                    m.cuda.init()
                except Exception as e:
                    out[dist]["cuda_error"] = str(e).splitlines()[0][:300]
    except Exception as e:
        out[dist] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
print(json.dumps(out))
"""


def installed() -> dict[str, dict]:
    """{distribution: {"version", torch: "cuda", "cuda_available"[, "cuda_error"]} or {"error"}}."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(CHECKED)], capture_output=True, text=True,
                          timeout=IMPORT_TIMEOUT_S)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {dist: {"error": f"the import check failed: {proc.stderr.strip()[-300:]}"} for dist in CHECKED}


def problems(pins: dict[str, str], found: dict[str, dict], need_flash_attn: bool = True,
             gpus: Optional[list] = None) -> list[tuple[str, bool]]:
    """(problem, certain) for each way the installed stack is not verl's; ``gpus``: nvidia-smi's (run.GPU)."""
    if not found:
        return []
    (who, whose), out = pinned_by(), []
    for dist, version in pins.items():
        got = found.get(dist, {})
        if "error" in got and (dist != "flash-attn" or need_flash_attn):
            out.append((f"{dist} {version} ({whose} pin) does not import: {got['error']}", True))
        elif "error" not in got and str(got.get("version")).split("+")[0] != version:
            out.append((f"{dist} {got.get('version')} is installed; {who} pins {version}", False))
    torch = found.get("torch", {})
    if "error" not in torch and not str(torch.get("cuda") or "").startswith(CUDA_MAJOR + "."):
        out.append((f"torch is built for CUDA {torch.get('cuda')}; verl's pins are CUDA {CUDA_MAJOR} builds", False))
    if gpus and "error" not in torch and not torch.get("cuda_available"):
        driver = gpus[0].driver
        out.append((f"nvidia-smi lists {len(gpus)} GPU(s) (NVIDIA driver {driver}) but torch {torch.get('version')} "
                    f"(CUDA {torch.get('cuda')}) cannot use them: {torch.get('cuda_error', 'torch.cuda.is_available() is False')}"
                    + (f". CUDA {CUDA_MAJOR} builds need driver {MIN_DRIVER} or newer (docs/gpu.md: 'Older drivers')"
                       if driver.split(".")[0].isdigit() and int(driver.split(".")[0]) < MIN_DRIVER else ""), True))
    return out


def main() -> int:
    """``python -m bnpo.verl.preflight.stack``: the installed versions against verl's pins; exit 1 when a package
    does not import, every difference named."""
    pins, found = wanted(), installed()
    for dist, version in pins.items():
        got = found.get(dist, {})
        print(f"{dist:<14} wanted {version:<10} installed {got.get('version', got.get('error'))}"
              + (f" (CUDA {got['cuda']})" if got.get("cuda") else ""))
    trouble = problems(pins, found)
    for text, certain in trouble:
        print(f"{'error' if certain else 'warning'}: {text}", file=sys.stderr)
    return 1 if any(certain for _, certain in trouble) else 0


if __name__ == "__main__":
    sys.exit(main())
