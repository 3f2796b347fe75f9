"""Run a callback right after a module has been imported (a post-import hook).

The plugin is imported by ``import verl`` in every process; importing verl's trainers there would cost
seconds and pull in heavy dependencies in processes that never train. Instead the plugin asks to be
called back when (and only if) a process imports them. A callback that raises is recorded in ``FAILED``, with
every other part of the plugin that failed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType

logger = logging.getLogger(__name__)

Callback = Callable[[ModuleType], None]


# What bnpo could not extend in this process, by verl place (a module, or a module attribute): a fact about this
# process's verl install. The estimators refuse to run while it is not empty, and the start-up check of a bnpo run
# reports it (bnpo.verl.startup), instead of training on without the extension.
FAILED: dict[str, BaseException] = {}


def record(place: str, err: BaseException) -> None:
    """Record that bnpo could not extend verl's ``place`` (the first error per place is kept)."""
    FAILED.setdefault(place, err)
    logger.warning("bnpo: the verl plugin failed at %s (%s: %s); algorithm.adv_estimator=bnpo / ad_bnpo will stop in "
                   "this process.", place, type(err).__name__, err, exc_info=(type(err), err, err.__traceback__))


def _run(name: str, callback: Callback, module: ModuleType) -> None:
    try:
        callback(module)
    except Exception as err:  # a failing hook must not break verl's own import (other estimators still work)
        record(name, err)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = {}
        self._resolving: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if name not in self.callbacks or name in self._resolving:
            return None
        self._resolving.add(name)  # let the other finders locate the real module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._resolving.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module: ModuleType) -> None:
            exec_module(module)
            for callback in self.callbacks.pop(name, []):
                _run(name, callback, module)

        spec.loader.exec_module = exec_then_call
        return spec


_FINDER = _PostImportFinder()


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once ``name`` is imported (at once if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        _run(name, callback, module)
        return
    _FINDER.callbacks.setdefault(name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
