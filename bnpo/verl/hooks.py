"""What bnpo's verl plugin could not extend in this process (``FAILED``), and its post-import hooks (``wrapt``'s): a
trainer module is extended only where a process imports it, since importing verl's trainers costs seconds."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import ModuleType

import wrapt
import wrapt.importer

from .compat import VerlChanged, supported_text

logger = logging.getLogger(__name__)

# verl place (a module, or a module attribute) -> the error that kept bnpo from extending it in this process. While it
# is not empty the estimators refuse to run and a bnpo run's start-up check reports it (bnpo.verl.startup).
FAILED: dict[str, BaseException] = {}


def record(place: str, err: BaseException) -> None:
    """Record that bnpo could not extend verl's ``place`` (the first error per place is kept)."""
    FAILED.setdefault(place, err)
    logger.warning("bnpo: the verl plugin failed at %s (%s: %s); algorithm.adv_estimator=bnpo / ad_bnpo will stop in "
                   "this process.", place, type(err).__name__, err, exc_info=(type(err), err, err.__traceback__))


def failures() -> list[str]:
    """Every recorded failure, as text naming its verl place."""
    return [f"bnpo could not extend {place} ({type(err).__name__}: {err})" for place, err in FAILED.items()]


def refuse_if_failed(estimator: str) -> None:
    """Stop a bnpo / ad_bnpo run (its start-up, its estimator) in a process where part of the plugin failed."""
    if FAILED:
        raise VerlChanged(
            f"algorithm.adv_estimator={estimator}: {failures()[0]}. Without it bnpo would train with no start-up "
            "check, no bnpo/* metrics, no ad_bnpo components or no per-step checks. Install bnpo next to a verl it "
            f"supports ({supported_text()})."
        ) from next(iter(FAILED.values()))


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``name`` is imported (at once if it already is)."""

    def hook(module: ModuleType) -> None:
        try:
            callback(module)
        except Exception as err:  # a failing hook must not break verl's own import (other estimators still work)
            record(name, err)

    wrapt.register_post_import_hook(hook, name)
    # wrapt adds its finder to sys.meta_path once per process; code that resets sys.meta_path (a test's clean-up, a
    # sandbox) drops it, and every later hook would silently never fire
    if not any(isinstance(finder, wrapt.importer.ImportHookFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, wrapt.importer.ImportHookFinder())
