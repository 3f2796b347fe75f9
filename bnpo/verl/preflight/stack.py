"""The GPU software stack verl declares for this recipe, read from verl's own package metadata, against what is installed.

verl 0.9.1 pins its GPU stack in two extras: ``vllm`` (torch, vllm, transformers) and ``fsdp`` (flash-attn through its
extra ``flash-attn-cu130torch211``). The recipe needs both: vLLM generates, and verl's FSDP actor runs with
``attn_implementation=flash_attention_2`` (``verl/workers/config/model.py``) on packed sequences
(``use_remove_padding``). Reading the pins from the installed verl (not copying them) keeps the check right when
verl changes. Pure Python: package metadata only; the imports are tried in a fresh process (a broken CUDA library
must not take the caller down).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from typing import Optional

from packaging.requirements import Requirement

# The distributions of verl's extras this recipe runs on, and the module each one is imported as.
RECIPE_EXTRAS = ("vllm", "fsdp")
CHECKED = {"torch": "torch", "vllm": "vllm", "flash-attn": "flash_attn", "transformers": "transformers"}
# CUDA major version of the builds verl 0.9.1 pins (torch 2.11.0 and vllm 0.24.0 from PyPI)
CUDA_MAJOR = "13"
IMPORT_TIMEOUT_S = 300


def _extra_requirements(requires: list[str], extra: str, seen: set[str]) -> list[Requirement]:
    """verl's requirements of ``extra``, following its self-references (``verl[flash-attn-cu130torch211]``)."""
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or not req.marker.evaluate({"extra": extra}):
            continue
        if req.name == "verl":
            for inner in sorted(req.extras - seen):
                seen.add(inner)
                out += _extra_requirements(requires, inner, seen)
        else:
            out.append(req)
    return out


def wanted(requires: Optional[list[str]] = None) -> dict[str, str]:
    """{distribution: pinned version} of verl's recipe extras for the packages ``CHECKED`` names."""
    requires = metadata.requires("verl") if requires is None else requires
    pins = {}
    for extra in RECIPE_EXTRAS:
        for req in _extra_requirements(requires or [], extra, {extra}):
            spec = next(iter(req.specifier), None)
            if req.name in CHECKED and spec is not None and spec.operator == "==":
                pins[req.name] = spec.version
    return pins


_PROBE = """
import json, sys
out = {}
for dist, module in json.loads(sys.argv[1]).items():
    try:
        m = __import__(module)
        out[dist] = {"version": getattr(m, "__version__", None)}
        if module == "torch":
            out[dist]["cuda"] = m.version.cuda
    except Exception as e:
        out[dist] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
print(json.dumps(out))
"""


def installed() -> dict[str, dict]:
    """{distribution: {"version"[, "cuda"]} or {"error"}} as a fresh interpreter imports them."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(CHECKED)], capture_output=True, text=True,
                          timeout=IMPORT_TIMEOUT_S)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {dist: {"error": f"the import check failed: {proc.stderr.strip()[-300:]}"} for dist in CHECKED}


def problems(pins: dict[str, str], found: dict[str, dict], need_flash_attn: bool = True) -> list[str]:
    """What keeps the installed stack from being the one verl pins (empty: it is)."""
    out = []
    for dist, version in pins.items():
        if dist == "flash-attn" and not need_flash_attn:
            continue
        got = found.get(dist, {})
        if "error" in got:
            out.append(f"{dist} {version} (verl's pin) does not import: {got['error']}")
        elif got.get("version") is None or str(got["version"]).split("+")[0] != version:
            out.append(f"{dist} {got.get('version')} is installed; verl 0.9.1 pins {version}")
    cuda = found.get("torch", {}).get("cuda")
    if "error" not in found.get("torch", {}) and not str(cuda or "").startswith(CUDA_MAJOR + "."):
        out.append(f"torch is built for CUDA {cuda}; verl's pins are CUDA {CUDA_MAJOR} builds")
    return out


def main() -> int:
    """``python -m bnpo.verl.preflight.stack``: the installed versions against verl's pins; exit 1 when they differ."""
    pins, found = wanted(), installed()
    for dist, version in pins.items():
        got = found.get(dist, {})
        print(f"{dist:<14} verl pins {version:<10} installed {got.get('version', got.get('error'))}"
              + (f" (CUDA {got['cuda']})" if got.get("cuda") else ""))
    trouble = problems(pins, found)
    for problem in trouble:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if trouble else 0


if __name__ == "__main__":
    sys.exit(main())
