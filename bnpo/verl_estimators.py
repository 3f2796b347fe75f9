"""``bnpo`` and ``ad_bnpo`` with verl's estimator signature (registered by ``bnpo.verl_plugin``).

Thin wrappers: the numbers come from ``bnpo.advantage``; what verl does not pass (the reward components,
agent-loop sessions) comes from ``bnpo.verl_batch``; each call's statistics are kept in ``bnpo.stats``
for the trainer integration to log. Never imports verl.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .advantage import check_tensors, compute_ad_bnpo_advantage, compute_bnpo_advantage, component_rewards
from .config import _key, config_from_algorithm
from .stats import record
from .verl_batch import current_batch


def _require_index(index: Any, name: str) -> Any:
    if index is None:
        raise ValueError(
            f"{name} groups samples by question but got no index; verl passes the batch's 'uid' field "
            "(set by the trainer when rollout.n > 1). Pass index=<(bs,) question uids>."
        )
    return index


def _final_row(num_samples: int) -> Optional[Any]:
    context = current_batch()
    if context is None or context.final_row is None:
        return None
    if len(context.final_row) != num_samples:
        raise RuntimeError(
            f"bnpo: the batch has {num_samples} samples but the trainer described {len(context.final_row)} agent-loop "
            "outputs; verl's _compute_advantage no longer hands the estimator its batch in TransferQueue key order. "
            "Report this with your verl version (bnpo is tested with verl 0.9.1)."
        )
    return context.final_row


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
    cfg = config_from_algorithm(config)
    check_tensors(token_level_rewards=token_level_rewards, response_mask=response_mask)
    advantages, returns, stats = compute_bnpo_advantage(
        token_level_rewards, response_mask, _require_index(index, "bnpo"), cfg, final_row=_final_row(response_mask.shape[0])
    )
    record(stats)
    return advantages, returns


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
        non_tensor_batch: per-sample fields, ``non_tensor_batch[key]`` (bs,) per component. verl passes
            it to no estimator but gdpo; when absent, the fields published by bnpo's trainer integration
            (``bnpo.verl_batch``) are used.

    Returns:
        advantages, returns: (bs, L), equal; float64 for float64 rewards, float32 otherwise.
    """
    cfg = config_from_algorithm(config)
    context = current_batch()
    fields = non_tensor_batch if non_tensor_batch is not None else (context.fields if context else None)
    if fields is None:
        raise ValueError(
            "ad_bnpo got no per-sample reward fields: verl hands them to no estimator but gdpo, and bnpo's trainer "
            "integration did not run (it extends verl's v1 PPOTrainer._compute_advantage and the legacy trainer's "
            f"compute_advantage). Pass non_tensor_batch=<dict with the keys of {_key('components')}>."
        )
    check_tensors(token_level_rewards=token_level_rewards, response_mask=response_mask)
    components = component_rewards(fields, cfg, response_mask.shape[0], response_mask.device)
    advantages, returns, stats = compute_ad_bnpo_advantage(
        components, response_mask, _require_index(index, "ad_bnpo"), cfg, dtype=token_level_rewards.dtype,
        final_row=_final_row(response_mask.shape[0]), token_level_rewards=token_level_rewards,
    )
    record(stats)
    return advantages, returns


ESTIMATOR_FUNCTIONS = {"bnpo": compute_bnpo_outcome_advantage, "ad_bnpo": compute_ad_bnpo_outcome_advantage}
ESTIMATORS = tuple(ESTIMATOR_FUNCTIONS)
