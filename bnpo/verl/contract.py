"""The contract every verl trainer bnpo extends keeps for a bnpo / ad_bnpo run, written once (docs/verl.md, "The
trainer contract"); other estimators run verl's code untouched.

1. **Per-run check**: building a trainer runs the whole start-up check (``check_run_config``) in the process that
   trains, before verl's ``__init__`` (``check_at_construction``), and, in a Ray job, starts the trainer's node watch
   (``bnpo.verl.watchdog``); a trainer built another way runs the check at its first advantage step.
2. **Scope**: ``advantage_step`` runs verl's step in an estimator scope holding what verl does not hand the
   estimator. ``fit`` of ``RayPPOTrainer`` and its subclasses runs as
   a *trainer run* (``fit_in_run``): an estimator called there outside an advantage step raises.
3. **Required statistics**: a step in which verl did not call bnpo's estimator inside the scope has no statistics.
4. **Metrics**: the statistics go into the step's metrics once; the legacy trainer's are held for its
   ``compute_data_metrics``, and a step whose metrics were never logged has no statistics.

A step without statistics stops the run at its first training step, where nothing is lost yet; later it is a warning
once per trainer and ``bnpo/steps_without_stats`` in the metrics of each such step (``missing_stats``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..core.config import BNPOConfig
from .compat import VerlChanged, check_before_init, installed_verl, uses_bnpo
from .context import current_run, estimator_scope, trainer_run
from .metrics import metrics_of
from .startup import check_run_config

logger = logging.getLogger(__name__)

# kept on the trainer object, never in the process: two trainers in one process keep their own
_CHECKED = "_bnpo_checked_config"  # the parsed block, once the per-run check passed
_HELD = "_bnpo_held_metrics"  # a legacy trainer's (step, metrics) of an advantage step not logged yet
_FIRST = "_bnpo_first_step"  # the training step of its first advantage step
_MISSING = "_bnpo_steps_without_stats"  # its training steps that had no statistics
STEPS_WITHOUT_STATS = "bnpo/steps_without_stats"


def checked_config(trainer: Any, kind: str, config: Any = None) -> BNPOConfig:
    """The trainer's parsed ``algorithm.bnpo`` block; the first call runs the per-run check (rule 1) for the ``kind``
    of trainer (a key of ``compat.TRAINER_MODULES``) on ``config`` (default: ``trainer.config``)."""
    cfg = getattr(trainer, _CHECKED, None)
    if cfg is None:
        cfg = check_run_config(trainer.config if config is None else config, trainer=kind)
        setattr(trainer, _CHECKED, cfg)
    return cfg


def check_at_construction(cls: type, kind_of: Callable[[Any], str]) -> None:
    """Rule 1 in ``cls.__init__``, before verl's, which verl's TaskRunners call before any rollout or validation."""

    def check(trainer: Any, config: Any) -> None:
        checked_config(trainer, kind_of(trainer), config)
        from .watchdog import watch  # imported by the process that trains only

        watch(trainer)  # a Ray node of the run that dies ends it (verl 0.9.1 may wait for it forever)

    check_before_init(cls, check)


def legacy_kind(trainer: Any) -> str:
    """The ``compat.TRAINER_MODULES`` key of a ``RayPPOTrainer`` or subclass (the separated ones by class name)."""
    names = {cls.__name__ for cls in type(trainer).__mro__}
    if "FullyAsyncTrainer" in names:
        return "fully_async_policy"
    return "one_step_off_policy" if "SeparateRayPPOTrainer" in names else "legacy"


def training_step(trainer: Any) -> Optional[int]:
    step = getattr(trainer, "global_steps", None)
    return int(step) if isinstance(step, (int, np.integer)) and not isinstance(step, bool) else None


@dataclass
class AdvantageStep:
    """One advantage step of a bnpo run: the estimator, its parsed block and (after the step) its metrics."""

    estimator: str
    cfg: BNPOConfig
    metrics: dict[str, float] = field(default_factory=dict)


@contextmanager
def advantage_step(
    trainer: Any, kind: str, place: str, fields: Optional[Mapping[str, Any]] = None,
    final_row: Optional[np.ndarray] = None,
) -> Iterator[AdvantageStep]:
    """Run verl's advantage step (``place``, named in errors) of ``trainer`` inside the block: rules 1-3; afterwards
    ``.metrics`` holds the step's metrics for the trainer's sink (rule 4)."""
    step = AdvantageStep(str(trainer.config.algorithm.adv_estimator), checked_config(trainer, kind))
    number = training_step(trainer)
    if not hasattr(trainer, _FIRST):
        setattr(trainer, _FIRST, number)
    with estimator_scope(fields, final_row) as scope:
        yield step
    stats = scope.take_stats()
    if stats is not None:
        step.metrics = metrics_of(stats)
        return
    step.metrics = missing_stats(trainer, number, VerlChanged(
        f"algorithm.adv_estimator={step.estimator}: verl's {place} ran without calling bnpo's estimator inside "
        f"bnpo's scope, so step {number} has no bnpo/* metrics (verl {installed_verl()} changed how it calls "
        "estimators?). Report this with your verl version."
    ))


def missing_stats(trainer: Any, step: Optional[int], error: VerlChanged) -> dict[str, float]:
    """Step ``step`` of ``trainer`` has no statistics (``error`` says why): at its first step (or one it cannot number)
    ``error`` stops the run; later a warning once per trainer, and the metric counting such steps is returned."""
    if step is None or step == getattr(trainer, _FIRST, step):
        raise error
    missing = getattr(trainer, _MISSING, None)
    if missing is None:
        missing = set()
        setattr(trainer, _MISSING, missing)
        logger.warning(
            "bnpo: %s The run goes on: bnpo counts such steps in %s (logged with each of them) and does not repeat "
            "this warning for this trainer.", error, STEPS_WITHOUT_STATS,
        )
    missing.add(step)
    return {STEPS_WITHOUT_STATS: float(len(missing))}


def _not_logged(trainer: Any, held: tuple) -> VerlChanged:
    cls = type(trainer)
    return VerlChanged(
        f"algorithm.adv_estimator={trainer.config.algorithm.adv_estimator}: the bnpo/* metrics of step {held[0]} were "
        f"never logged: {cls.__module__}.{cls.__qualname__} did not call verl.trainer.ppo.ray_trainer."
        "compute_data_metrics after its advantage step (a fit of its own that logs another way?)."
    )


def _take_held(trainer: Any) -> Optional[tuple]:
    held = getattr(trainer, _HELD, None)
    setattr(trainer, _HELD, None)
    return held


def hold_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Keep a legacy step's metrics for its ``compute_data_metrics``; a previous step's still held were never logged
    (a step without statistics, whose count this step logs)."""
    held = _take_held(trainer)
    if held is not None:
        metrics = {**metrics, **missing_stats(trainer, held[0], _not_logged(trainer, held))}
    setattr(trainer, _HELD, (training_step(trainer), metrics))


def take_held_metrics(trainer: Any, place: str) -> dict[str, float]:
    """The metrics of the legacy step that ``place`` logs; a step without a bnpo advantage step before it has none."""
    held = _take_held(trainer)
    if held is not None:
        return held[1]
    step = training_step(trainer)
    return missing_stats(trainer, step, VerlChanged(
        f"algorithm.adv_estimator={trainer.config.algorithm.adv_estimator}: step {step} reached {place} without a "
        f"bnpo advantage step before it, so it would log no bnpo/* metrics (verl {installed_verl()} computes "
        "advantages another way?). Report this with your verl version."
    ))


@contextmanager
def _run_of(trainer: Any) -> Iterator[None]:
    """The block as ``trainer``'s run (rule 2); when it returns, every step's metrics must have been logged (rule 4)."""
    with trainer_run(trainer):
        yield
    held = _take_held(trainer)
    if held is not None:  # the run is over: nothing left to log it with
        missing_stats(trainer, held[0], _not_logged(trainer, held))


def fit_in_run(fit: Callable) -> Callable:
    """``fit`` (a training loop of ``RayPPOTrainer`` or a subclass; plain or ``async``) as a trainer run of a bnpo
    config; a nested call (a subclass's ``fit`` calling its base's) stays in the run it is in."""

    def run_of(trainer: Any):
        return nullcontext() if not uses_bnpo(trainer.config) or current_run() is trainer else _run_of(trainer)

    if inspect.iscoroutinefunction(fit):

        @functools.wraps(fit)
        async def async_fit(self, *args, **kwargs):
            with run_of(self):
                return await fit(self, *args, **kwargs)

        return async_fit

    @functools.wraps(fit)
    def sync_fit(self, *args, **kwargs):
        with run_of(self):
            return fit(self, *args, **kwargs)

    return sync_fit
