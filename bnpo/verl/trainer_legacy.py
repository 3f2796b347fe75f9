"""bnpo in verl's legacy trainer (``trainer.use_v1=False``, ``RayPPOTrainer``) and every subclass of it.

The legacy trainer has no extension point: ``RayPPOTrainer.fit`` calls the module functions
``compute_advantage`` (which passes ``non_tensor_batch`` to gdpo only) and ``compute_data_metrics``
(whose result it logs every step). ``install`` keeps bnpo's trainer contract (``bnpo.verl.contract``) with three
wraps in ``verl.trainer.ppo.ray_trainer``:
- ``RayPPOTrainer.fit``, and the ``fit`` of every subclass that defines its own (sync or async: the separated
  trainers' too), runs as the trainer's run;
- ``compute_advantage``, called in a trainer's run, is that trainer's advantage step (per-run check, scope with the
  batch's per-sample fields, required statistics), and its metrics are held for the step's ``compute_data_metrics``;
  called inside another advantage step or a scope the caller opened, it publishes the batch's fields to the
  estimator and hands the statistics to that scope;
- ``compute_data_metrics`` adds the held metrics (a bnpo step without them is a step without statistics).
Building ``RayPPOTrainer``, or a subclass with its own ``__init__``, for a bnpo config runs the per-run check first
(``contract.checked_at_construction``): the legacy TaskRunner refuses the trainer before ``init_workers`` and ``fit``.
Other estimators pass through. ``RayPPOTrainer``'s checkpointing, which its subclasses inherit, also keeps the pooled
fits of ``fit_halflife`` (``bnpo.verl.checkpoint``).
"""

from __future__ import annotations

import functools
from types import ModuleType

from ..core.config import ESTIMATORS
from . import checkpoint, compat, contract
from .context import current_run, current_scope, estimator_scope
from .metrics import metrics_of

ADVANTAGE = "verl.trainer.ppo.ray_trainer.compute_advantage"
DATA_METRICS = "verl.trainer.ppo.ray_trainer.compute_data_metrics"


def wrap_compute_advantage(compute_advantage):
    """verl's ``compute_advantage(data, adv_estimator, ...)`` with bnpo's side of it (see the module)."""

    @functools.wraps(compute_advantage)
    def advantage_with_fields(data, adv_estimator, *args, **kwargs):
        if adv_estimator not in ESTIMATORS:
            return compute_advantage(data, adv_estimator, *args, **kwargs)
        outer, trainer = current_scope(), current_run()
        if outer is None and trainer is not None:  # the legacy trainer's step
            with contract.advantage_step(trainer, "legacy", ADVANTAGE, fields=data.non_tensor_batch) as step:
                result = compute_advantage(data, adv_estimator, *args, **kwargs)
            contract.hold_metrics(trainer, step.metrics)
            return result
        # a separated trainer's advantage step, a caller's own scope, or a direct call (no pooled fits, no statistics)
        fields = {**(outer.fields if outer else {}), **data.non_tensor_batch}
        with estimator_scope(outer.fit_state if outer else None, fields, outer.final_row if outer else None) as inner:
            result = compute_advantage(data, adv_estimator, *args, **kwargs)
        if outer is not None:
            outer.stats = inner.stats
        return result

    return advantage_with_fields


def wrap_compute_data_metrics(compute_data_metrics):
    """verl's ``compute_data_metrics`` with the step's bnpo metrics."""

    @functools.wraps(compute_data_metrics)
    def data_metrics_with_bnpo(*args, **kwargs):
        metrics = compute_data_metrics(*args, **kwargs)
        trainer = current_run()
        if trainer is not None and compat.uses_bnpo(trainer.config):
            return {**metrics, **contract.take_held_metrics(trainer, DATA_METRICS)}
        scope = current_scope()  # a caller's own scope around compute_advantage and this call
        stats = scope.take_stats() if scope is not None else None
        return {**metrics, **metrics_of(stats)} if stats is not None else metrics

    return data_metrics_with_bnpo


def _wrap_fit(cls: type) -> None:
    """Extend what ``cls`` defines itself: its ``fit`` runs as the trainer's run, its ``__init__`` checks a bnpo run
    before verl builds anything (verl's TaskRunners build the trainer before any rollout or validation)."""
    if "fit" in cls.__dict__:
        compat.patch(cls, "fit", contract.fit_in_run)
    # fully_async's __init__ is bnpo.verl.trainer_fully_async's to extend (it also refuses fit_halflife): wrapping it
    # here would replace that wrapper whenever this install runs after that one (a plugin imported again)
    if "__init__" in cls.__dict__ and cls.__name__ != "FullyAsyncTrainer":
        compat.patch(cls, "__init__", contract.checked_at_construction(contract.legacy_kind))


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _wrap_fits_of_subclasses(base: type) -> None:
    """Wrap the ``fit`` of every subclass of ``base`` that defines one: those that exist, and (through
    ``__init_subclass__``) those defined later, e.g. when one_step_off_policy's module is imported."""
    for cls in _subclasses(base):
        _wrap_fit(cls)
    previous = base.__dict__.get("__init_subclass__")
    previous = getattr(previous, "__func__", previous)
    original = getattr(previous, "_bnpo_original", previous)  # verl's own, if it ever defines one

    def __init_subclass__(cls, **kwargs):
        if original is not None:
            original(cls, **kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        _wrap_fit(cls)

    __init_subclass__._bnpo_original = original
    base.__init_subclass__ = classmethod(__init_subclass__)


def install(ray_trainer: ModuleType) -> None:
    """Wrap ``compute_advantage``, ``compute_data_metrics`` and the ``fit`` of ``RayPPOTrainer`` and its subclasses in
    verl's ``ray_trainer`` module, and its checkpointing (every place is checked before anything is patched)."""
    compat.require_all(ray_trainer)
    base = ray_trainer.RayPPOTrainer
    checkpoint.install(base)
    _wrap_fit(base)
    _wrap_fits_of_subclasses(base)
    compat.patch(ray_trainer, "compute_data_metrics", wrap_compute_data_metrics)
    compat.patch(ray_trainer, "compute_advantage", wrap_compute_advantage)
