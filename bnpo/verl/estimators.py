"""``bnpo`` and ``ad_bnpo`` with verl's estimator signature (registered by ``bnpo.verl.plugin``; never imports verl).

Thin wrappers of ``bnpo.core``: what verl does not pass (ad_bnpo's components, agent-loop sessions, the trainer's
pooled fits) comes from the open ``EstimatorScope``, and each call leaves its statistics there. They refuse to run
where part of bnpo's plugin failed, or in a training loop bnpo extends but outside its advantage step: both would
train without what bnpo adds.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..core.advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage
from ..core.config import _key, config_from_algorithm
from ..core.scores import component_rewards
from . import hooks
from .compat import VerlChanged
from .context import EstimatorScope, current_run, current_scope


def _scope(name: str) -> Optional[EstimatorScope]:
    """The open estimator scope, after checking that this call is one bnpo's plugin and trainer extensions serve."""
    hooks.refuse_if_failed(name)
    scope = current_scope()
    trainer = current_run()
    if scope is None and trainer is not None:
        cls = type(trainer)
        raise VerlChanged(
            f"algorithm.adv_estimator={name}: verl's {cls.__module__}.{cls.__qualname__} called bnpo's estimator in its "
            "training loop but outside the advantage step bnpo extends (verl.trainer.ppo.ray_trainer.compute_advantage, "
            "SeparateRayPPOTrainer._fit_compute_advantage): its metrics and pooled fits would be lost. The trainer, or "
            "a verl module bnpo extends, computes advantages another way (moved or overridden?)."
        )
    return scope


def _start(name: str, config: Any, index: Any) -> tuple[Optional[EstimatorScope], Any, dict[str, Any]]:
    """The open scope (``_scope``), the parsed ``bnpo`` block of verl's algorithm ``config``, and what the scope hands
    the core function (the agent-loop sessions and the trainer's pooled fits)."""
    scope = _scope(name)
    cfg = config_from_algorithm(config)
    if index is None:
        raise ValueError(
            f"{name} groups samples by question but got no index; verl passes the batch's 'uid' field "
            "(set by the trainer when rollout.n > 1). Pass index=<(bs,) question uids>."
        )
    return scope, cfg, {"final_row": _final_row(scope, index), "fit_state": scope.fit_state if scope else None}


def _finish(scope: Optional[EstimatorScope], stats: Any, advantages: torch.Tensor, returns: torch.Tensor) -> tuple:
    """Leave the call's statistics in the open scope for the trainer to log; verl takes (advantages, returns)."""
    if scope is not None:
        scope.stats = stats
    return advantages, returns


def _final_row(scope: Optional[EstimatorScope], index: Any) -> Optional[Any]:
    if scope is None or scope.final_row is None:
        return None
    if len(scope.final_row) != len(index):
        raise RuntimeError(
            f"bnpo: the batch has {len(index)} samples but the trainer described {len(scope.final_row)} agent-loop "
            "outputs; verl's _compute_advantage no longer hands the estimator its batch in TransferQueue key order. "
            "Report this with your verl version."
        )
    return scope.final_row


def _component_fields(non_tensor_batch: Optional[dict], scope: Optional[EstimatorScope]) -> Optional[dict]:
    """The per-sample fields ad_bnpo reads its components from: the open scope's, overlaid by ``non_tensor_batch``.

    Merged, not either-or: verl PR #7473 hands ``non_tensor_batch`` to every estimator that accepts it, and in the v1
    trainer that dict holds only ``uid`` (the reward function's scores stay in TransferQueue, where bnpo's trainer
    integration read them into the scope); preferring it would hide every component. None when neither exists.
    """
    if non_tensor_batch is None:
        return scope.fields if scope else None
    return {**(scope.fields if scope else {}), **non_tensor_batch}


def compute_bnpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Optional[Any] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BNPO outcome advantage (verl estimator signature).

    Args:
        token_level_rewards: (bs, L); an output's reward is the sum over its tokens.
        response_mask: (bs, L); samples without response tokens (verl's padding rows) get 0 and stay out
            of the groups and the fit.
        index: (bs,) question uids (verl's ``uid``).
        config: verl's algorithm config (DictConfig, AlgoConfig or None); its ``bnpo`` block is read.

    Returns:
        advantages, returns: (bs, L), equal; float64 for float64 rewards, float32 otherwise.
    """
    scope, cfg, from_scope = _start("bnpo", config, index)
    advantages, returns, stats = compute_bnpo_advantage(token_level_rewards, response_mask, index, cfg, **from_scope)
    return _finish(scope, stats, advantages, returns)


def compute_ad_bnpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Optional[Any] = None,
    non_tensor_batch: Optional[dict] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AD-BNPO outcome advantage (verl estimator signature).

    Args:
        token_level_rewards: (bs, L); its dtype and device are used, and it is checked to carry nothing the
            components do not (token-level shaping, a penalty outside the components).
        response_mask: (bs, L).
        index: (bs,) question uids.
        config: verl's algorithm config; ``bnpo.components`` names the reward keys.
        non_tensor_batch: per-sample fields, ``non_tensor_batch[key]`` (bs,) per component. verl 0.9 passes
            it to no estimator but gdpo; the fields of the open scope (bnpo's trainer integration) are used,
            overlaid by the keys it holds (a component in neither is an error naming the keys there are).

    Returns:
        advantages, returns: (bs, L), equal; float64 for float64 rewards, float32 otherwise.
    """
    scope, cfg, from_scope = _start("ad_bnpo", config, index)
    fields = _component_fields(non_tensor_batch, scope)
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
