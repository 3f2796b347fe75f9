"""The contract every verl trainer bnpo extends keeps for a bnpo / ad_bnpo run, written once.

The trainers: verl's v1 ``PPOTrainer`` in every mode (``bnpo.verl.trainer_v1``), the legacy ``RayPPOTrainer`` and
every subclass (``trainer_legacy``), and the separated trainers of one_step_off_policy and fully_async_policy
(``trainer_separation``, ``trainer_fully_async``). Each extension runs verl's advantage step inside
``advantage_step`` and hands its metrics to the sink that trainer logs; runs of other estimators run verl's code
untouched.

1. **Per-run check.** Building a trainer object for a bnpo config runs the whole start-up check in the process that
   trains (``check_run_config`` with the integration: the config, verl's version, the trainer's verl modules under the
   names bnpo hooks, nothing of the plugin failed here, the estimator bnpo's), before verl's own ``__init__``
   (``checked_at_construction``): a TaskRunner whose install differs from the driver's refuses the trainer before any
   rollout or validation. A trainer built another way (``__new__``) runs it at its first advantage step.
2. **Scope.** The step runs in an estimator scope holding the trainer's own pooled fits, at the trainer's training
   step (``fit_halflife`` decays once per training step, however many local updates a step has), and what verl does not
   hand the estimator (ad_bnpo's components, the agent-loop sessions). The training loops (``fit``) of
   ``RayPPOTrainer`` and its subclasses run as a *trainer run*: an estimator called there outside an advantage step
   (a subclass or a moved verl module that computes advantages another way) raises.
3. **Required statistics.** The step must leave bnpo's statistics: a step in which verl did not call bnpo's estimator
   inside the scope is a step without statistics (below), named by its verl place.
4. **Metrics.** The statistics go into the step's metrics once (``bnpo.verl.metrics``: names verl's aggregator reduces
   as bnpo means). The legacy trainer logs them through the step's ``compute_data_metrics``: until then they are held;
   a step whose statistics were never logged (seen at the next step, or when ``fit`` returns), or that logs without a
   bnpo advantage step before it, is a step without statistics.

A step without statistics stops the run at its first training step, where nothing is lost yet (a verl that changed
under bnpo fails there). At a later step it is bookkeeping, not a reason to end a multi-day run: a warning, once per
trainer, and ``bnpo/steps_without_stats`` (how many of the run's training steps had none so far) in the metrics of
each step that had none (``missing_stats``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..core.config import BNPOConfig
from .compat import VerlChanged, installed_verl, uses_bnpo
from .context import current_run, estimator_scope, fit_state_of, trainer_run
from .metrics import metrics_of
from .startup import check_run_config

logger = logging.getLogger(__name__)

_CHECKED = "_bnpo_checked_config"  # on the trainer object: the parsed block, once the per-run check passed
_HELD = "_bnpo_held_metrics"  # on a legacy trainer: (step, metrics) of an advantage step not logged yet
_FIRST = "_bnpo_first_step"  # on the trainer object: the training step of its first advantage step
_MISSING = "_bnpo_steps_without_stats"  # on the trainer object: its training steps that had no statistics
STEPS_WITHOUT_STATS = "bnpo/steps_without_stats"


def checked_config(trainer: Any, kind: str, config: Any = None) -> BNPOConfig:
    """The trainer's parsed ``algorithm.bnpo`` block; its first call runs the whole start-up check (rule 1) for the
    ``kind`` of trainer (a key of ``bnpo.verl.compat.TRAINER_MODULES``) on ``config`` (default: ``trainer.config``,
    which verl sets in its ``__init__``)."""
    cfg = getattr(trainer, _CHECKED, None)
    if cfg is None:
        cfg = check_run_config(trainer.config if config is None else config, trainer=kind)
        setattr(trainer, _CHECKED, cfg)
    return cfg


def checked_at_construction(kind_of: Callable[[Any], str]) -> Callable[[Callable], Callable]:
    """A wrapper for a trainer class's ``__init__`` (for ``compat.patch``): for a bnpo / ad_bnpo config it runs the
    per-run check (rule 1, for the trainer's ``kind_of(self)``) before verl's ``__init__``, which verl's TaskRunners
    call before any rollout or validation. A subclass's ``__init__`` that calls its base's checks once."""

    def wrap(original: Callable) -> Callable:
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            config = kwargs.get("config", args[0] if args else None)
            if uses_bnpo(config):
                checked_config(self, kind_of(self), config)
            original(self, *args, **kwargs)

        return __init__

    return wrap


def legacy_kind(trainer: Any) -> str:
    """The key in ``bnpo.verl.compat.TRAINER_MODULES`` of ``trainer``, a ``RayPPOTrainer`` or a subclass: the
    separated trainers (fully_async's derives from one_step_off's base) by their verl class names."""
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
    trainer: Any,
    kind: str,
    place: str,
    fields: Optional[Mapping[str, Any]] = None,
    final_row: Optional[np.ndarray] = None,
) -> Iterator[AdvantageStep]:
    """Run verl's advantage step (``place``, named in errors) of ``trainer``, a bnpo run, inside the block: rules 1-3;
    afterwards ``.metrics`` holds the step's metrics for the trainer's sink (rule 4)."""
    step = AdvantageStep(str(trainer.config.algorithm.adv_estimator), checked_config(trainer, kind))
    state = fit_state_of(trainer)
    state.step = training_step(trainer)
    if not hasattr(trainer, _FIRST):
        setattr(trainer, _FIRST, state.step)
    with estimator_scope(state, fields, final_row) as scope:
        yield step
    stats = scope.take_stats()
    if stats is None:
        step.metrics = missing_stats(trainer, state.step, VerlChanged(
            f"algorithm.adv_estimator={step.estimator}: verl's {place} ran without calling bnpo's estimator inside "
            f"bnpo's scope, so step {state.step} has no bnpo/* metrics (verl {installed_verl()} changed how it calls "
            "estimators?). Report this with your verl version."
        ))
    else:
        step.metrics = metrics_of(stats)


def missing_stats(trainer: Any, step: Optional[int], error: VerlChanged) -> dict[str, float]:
    """Training step ``step`` of ``trainer`` has no bnpo statistics (``error`` says why). At the trainer's first step
    (or a step it cannot number) ``error`` stops the run: nothing is lost yet, and a verl that changed under bnpo
    fails there. Later: a warning once per trainer; returns the metric counting the steps without statistics."""
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


def hold_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Keep a legacy step's metrics for its ``compute_data_metrics``; a previous step's still held were never logged
    (a step without statistics, whose count this step logs)."""
    held = getattr(trainer, _HELD, None)
    if held is not None:
        setattr(trainer, _HELD, None)
        metrics = {**metrics, **missing_stats(trainer, held[0], _not_logged(trainer, held))}
    setattr(trainer, _HELD, (training_step(trainer), metrics))


def take_held_metrics(trainer: Any, place: str) -> dict[str, float]:
    """The metrics of the legacy step that ``place`` logs; a step without a bnpo advantage step before it has none."""
    held = getattr(trainer, _HELD, None)
    if held is None:
        step = training_step(trainer)
        return missing_stats(trainer, step, VerlChanged(
            f"algorithm.adv_estimator={trainer.config.algorithm.adv_estimator}: step {step} reached "
            f"{place} without a bnpo advantage step before it, so it would log no bnpo/* metrics (verl "
            f"{installed_verl()} computes advantages another way?). Report this with your verl version."
        ))
    setattr(trainer, _HELD, None)
    return held[1]


def _all_logged(trainer: Any) -> None:
    held = getattr(trainer, _HELD, None)
    if held is not None:
        setattr(trainer, _HELD, None)
        missing_stats(trainer, held[0], _not_logged(trainer, held))  # the run is over: nothing left to log it with


def fit_in_run(fit: Callable) -> Callable:
    """``fit`` (a training loop of ``RayPPOTrainer`` or a subclass; plain or ``async``) running as a trainer run for a
    bnpo config (rule 2), and checking when it returns that every step's metrics were logged (rule 4)."""
    if inspect.iscoroutinefunction(fit):

        @functools.wraps(fit)
        async def async_fit(self, *args, **kwargs):
            if not uses_bnpo(self.config) or current_run() is self:
                return await fit(self, *args, **kwargs)
            with trainer_run(self):
                result = await fit(self, *args, **kwargs)
            _all_logged(self)
            return result

        return async_fit

    @functools.wraps(fit)
    def sync_fit(self, *args, **kwargs):
        if not uses_bnpo(self.config) or current_run() is self:
            return fit(self, *args, **kwargs)
        with trainer_run(self):
            result = fit(self, *args, **kwargs)
        _all_logged(self)
        return result

    return sync_fit
