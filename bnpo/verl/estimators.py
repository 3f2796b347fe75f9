"""``bnpo`` and ``ad_bnpo`` with verl's estimator signature (registered by ``bnpo.verl.plugin``; never imports verl):
thin wrappers of ``bnpo.core`` that take what verl does not pass from the open ``EstimatorScope`` and leave their
statistics there."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..core.advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage
from ..core.config import _key, config_from_algorithm
from ..core.scores import component_rewards
from . import hooks
from .compat import VerlChanged
from .context import EstimatorScope, current_run, current_scope


def _start(name: str, config: Any, index: Any) -> tuple[Optional[EstimatorScope], Any, dict[str, Any]]:
    """The open scope, the parsed ``bnpo`` block of verl's algorithm ``config``, and what the scope hands the core
    function; refused where part of bnpo's plugin failed or outside a trainer's advantage step (bnpo would be lost)."""
    hooks.refuse_if_failed(name)
    scope, trainer = current_scope(), current_run()
    if scope is None and trainer is not None:
        cls = type(trainer)
        raise VerlChanged(
            f"algorithm.adv_estimator={name}: verl's {cls.__module__}.{cls.__qualname__} called bnpo's estimator in "
            "its training loop but outside the advantage step bnpo extends (verl.trainer.ppo.ray_trainer."
            "compute_advantage, SeparateRayPPOTrainer._fit_compute_advantage): its metrics would be lost. The "
            "trainer, or a verl module bnpo extends, computes advantages another way (moved or overridden?)."
        )
    cfg = config_from_algorithm(config)
    if index is None:
        raise ValueError(
            f"{name} groups samples by question but got no index; verl passes the batch's 'uid' field "
            "(set by the trainer when rollout.n > 1). Pass index=<(bs,) question uids>."
        )
    final_row = scope.final_row if scope is not None else None
    if final_row is not None and len(final_row) != len(index):
        raise RuntimeError(
            f"bnpo: the batch has {len(index)} samples but the trainer described {len(final_row)} agent-loop "
            "outputs; verl's _compute_advantage no longer hands the estimator its batch in TransferQueue key order. "
            "Report this with your verl version."
        )
    return scope, cfg, {"final_row": final_row}


def _finish(scope: Optional[EstimatorScope], stats: Any, advantages: torch.Tensor, returns: torch.Tensor) -> tuple:
    """Leave the call's statistics in the open scope for the trainer to log; verl takes (advantages, returns)."""
    if scope is not None:
        scope.stats = stats
    return advantages, returns


def compute_bnpo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                                   config: Optional[Any] = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """BNPO outcome advantages and returns, equal, (bs, L), from (bs, L) token rewards (summed per output; rows without
    response tokens get 0), (bs,) question uids ``index`` and verl's algorithm ``config`` (its ``bnpo`` block)."""
    scope, cfg, from_scope = _start("bnpo", config, index)
    advantages, returns, stats = compute_bnpo_advantage(token_level_rewards, response_mask, index, cfg, **from_scope)
    return _finish(scope, stats, advantages, returns)


def compute_ad_bnpo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                                      config: Optional[Any] = None, non_tensor_batch: Optional[dict] = None,
                                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """AD-BNPO outcome advantages of the reward components ``bnpo.components`` names, read from the open scope's (bs,)
    fields overlaid by ``non_tensor_batch``; ``token_level_rewards`` must carry nothing the components do not."""
    scope, cfg, from_scope = _start("ad_bnpo", config, index)
    # merged, not either-or: verl PR #7473 hands non_tensor_batch to every estimator that accepts it, and in the v1
    # trainer it holds only uid (the scores stay in TransferQueue, read into the scope): preferring it hides them
    if non_tensor_batch is None:
        fields = scope.fields if scope else None
    else:
        fields = {**(scope.fields if scope else {}), **non_tensor_batch}
    if fields is None:
        raise ValueError(
            "ad_bnpo got no per-sample reward fields: verl hands them to no estimator but gdpo, and bnpo's trainer "
            "integration did not run (it extends verl's trainers' advantage step). Pass non_tensor_batch=<dict with "
            f"the keys of {_key('components')}>, or call inside bnpo.verl.estimator_scope(fields=...)."
        )
    device = getattr(response_mask, "device", torch.device("cpu"))  # the core names a response_mask of the wrong type
    components = component_rewards(fields, cfg, len(index), device)
    advantages, returns, stats = compute_ad_bnpo_advantage(
        components, response_mask, index, cfg, dtype=getattr(token_level_rewards, "dtype", torch.float32),
        token_level_rewards=token_level_rewards, **from_scope,
    )
    return _finish(scope, stats, advantages, returns)


ESTIMATOR_FUNCTIONS = {"bnpo": compute_bnpo_outcome_advantage, "ad_bnpo": compute_ad_bnpo_outcome_advantage}
