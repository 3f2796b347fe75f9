"""Registers ``bnpo`` and ``ad_bnpo`` with verl's advantage-estimator registry.

Imported by verl itself through the ``verl.plugins`` entry point (verl >= 0.9), or through
``VERL_USE_EXTERNAL_MODULES=bnpo.verl_plugin`` on older verl. The estimators are thin wrappers:
the numbers come from ``bnpo.advantage``; the statistics of each call are kept in
``bnpo.stats.last_stats()`` for the trainer to log.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from .advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage, component_rewards
from .config import config_from_algorithm
from .stats import record

ESTIMATORS = ("bnpo", "ad_bnpo")


def _require_index(index: Any, name: str) -> Any:
    if index is None:
        raise ValueError(
            f"{name} groups samples by question but got no index; verl passes the batch's 'uid' field "
            "(set by the trainer when rollout.n > 1). Pass index=<(bs,) question uids>."
        )
    return index


@register_adv_est("bnpo")
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
        response_mask: (bs, L).
        index: (bs,) question uids (verl's ``uid``).
        config: verl's algorithm config (DictConfig, AlgoConfig or None); its ``bnpo`` block is read.

    Returns:
        advantages, returns: (bs, L), equal, in the dtype of ``token_level_rewards``.
    """
    cfg = config_from_algorithm(config)
    advantages, returns, stats = compute_bnpo_advantage(
        token_level_rewards, response_mask, _require_index(index, "bnpo"), cfg
    )
    record(stats)
    return advantages, returns


@register_adv_est("ad_bnpo")
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
        token_level_rewards: (bs, L); only its dtype and device are used.
        response_mask: (bs, L).
        index: (bs,) question uids.
        config: verl's algorithm config; ``bnpo.components`` names the reward keys.
        non_tensor_batch: verl's per-sample fields; ``non_tensor_batch[key]`` is (bs,) per component.

    Returns:
        advantages, returns: (bs, L), equal, in the dtype of ``token_level_rewards``.
    """
    cfg = config_from_algorithm(config)
    components = component_rewards(non_tensor_batch, cfg, response_mask.shape[0], token_level_rewards.device)
    advantages, returns, stats = compute_ad_bnpo_advantage(
        components, response_mask, _require_index(index, "ad_bnpo"), cfg, dtype=token_level_rewards.dtype
    )
    record(stats)
    return advantages, returns
