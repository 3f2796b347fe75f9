"""The contract every verl trainer bnpo extends keeps for a bnpo / ad_bnpo run, written once.

The trainers: verl's v1 ``PPOTrainer`` in every mode (``bnpo.verl.trainer_v1``), the legacy ``RayPPOTrainer`` and
every subclass (``trainer_legacy``), and the separated trainers of one_step_off_policy and fully_async_policy
(``trainer_separation``, ``trainer_fully_async``). Each extension runs verl's advantage step inside
``advantage_step`` and hands its metrics to the sink that trainer logs; runs of other estimators run verl's code
untouched.

1. **Per-run check.** The first advantage step of a trainer object runs the whole start-up check in the process that
   trains (``check_run_config`` with the integration: the config, verl's version, the trainer's verl modules under the
   names bnpo hooks, nothing of the plugin failed here, the estimator bnpo's). A TaskRunner whose install differs from
   the driver's stops at its first step. The fully_async trainer runs it when it is built, too.
2. **Scope.** The step runs in an estimator scope holding the trainer's own pooled fits, at the trainer's training
   step (``fit_halflife`` decays once per training step, however many local updates a step has), and what verl does not
   hand the estimator (ad_bnpo's components, the agent-loop sessions). The training loops (``fit``) of
   ``RayPPOTrainer`` and its subclasses run as a *trainer run*: an estimator called there outside an advantage step
   (a subclass or a moved verl module that computes advantages another way) raises.
3. **Required statistics.** The step must leave bnpo's statistics: a step in which verl did not call bnpo's estimator
   inside the scope raises, naming the verl place.
4. **Metrics.** The statistics go into the step's metrics once (``bnpo.verl.metrics``: names verl's aggregator reduces
   as bnpo means). The legacy trainer logs them through the step's ``compute_data_metrics``: until then they are held,
   and a step whose statistics were never logged raises at the next step, or when ``fit`` returns.
"""

from __future__ import annotations

import functools
import inspect
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

_CHECKED = "_bnpo_checked_config"  # on the trainer object: the parsed block, once the per-run check passed
_HELD = "_bnpo_held_metrics"  # on a legacy trainer: (step, metrics) of an advantage step not logged yet


def checked_config(trainer: Any, kind: str) -> BNPOConfig:
    """The trainer's parsed ``algorithm.bnpo`` block; its first call runs the whole start-up check (rule 1) for the
    ``kind`` of trainer (a key of ``bnpo.verl.compat.TRAINER_MODULES``)."""
    cfg = getattr(trainer, _CHECKED, None)
    if cfg is None:
        cfg = check_run_config(trainer.config, trainer=kind)
        setattr(trainer, _CHECKED, cfg)
    return cfg


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
    with estimator_scope(state, fields, final_row) as scope:
        yield step
    stats = scope.take_stats()
    if stats is None:
        raise VerlChanged(
            f"algorithm.adv_estimator={step.estimator}: verl's {place} ran without calling bnpo's estimator inside "
            f"bnpo's scope, so this step has no bnpo/* metrics (verl {installed_verl()} changed how it calls "
            "estimators?). Report this with your verl version."
        )
    step.metrics = metrics_of(stats)


def _not_logged(trainer: Any, held: tuple) -> VerlChanged:
    cls = type(trainer)
    return VerlChanged(
        f"algorithm.adv_estimator={trainer.config.algorithm.adv_estimator}: the bnpo/* metrics of step {held[0]} were "
        f"never logged: {cls.__module__}.{cls.__qualname__} did not call verl.trainer.ppo.ray_trainer."
        "compute_data_metrics after its advantage step (a fit of its own that logs another way?)."
    )


def hold_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Keep a legacy step's metrics for its ``compute_data_metrics``; the previous step's must have been taken."""
    held = getattr(trainer, _HELD, None)
    if held is not None:
        raise _not_logged(trainer, held)
    setattr(trainer, _HELD, (training_step(trainer), metrics))


def take_held_metrics(trainer: Any, place: str) -> dict[str, float]:
    """The metrics of the legacy step that ``place`` logs; a step without a bnpo advantage step raises."""
    held = getattr(trainer, _HELD, None)
    if held is None:
        raise VerlChanged(
            f"algorithm.adv_estimator={trainer.config.algorithm.adv_estimator}: step {training_step(trainer)} reached "
            f"{place} without a bnpo advantage step before it, so it would log no bnpo/* metrics (verl "
            f"{installed_verl()} computes advantages another way?). Report this with your verl version."
        )
    setattr(trainer, _HELD, None)
    return held[1]


def _all_logged(trainer: Any) -> None:
    held = getattr(trainer, _HELD, None)
    if held is not None:
        setattr(trainer, _HELD, None)
        raise _not_logged(trainer, held)


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
