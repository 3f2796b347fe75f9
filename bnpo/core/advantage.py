"""BNPO and AD-BNPO outcome advantages of a batch (pure torch; never imports verl).

Both decide which samples enter the groups (``groups``), check and map the rewards (``scores``), normalise them
(``normalize``; AD-BNPO each component with its own Beta fit, then their weighted mean) and spread the scalar
advantage over each response's tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from .config import BNPOConfig, _key, check_estimator
from .groups import group_inverse, select_rows
from .normalize import normalized_outcome
from .scores import (
    advantage_dtype, check_components_explain_outcome, check_outcome_only, check_tensors, map_rewards, outcome_rewards,
    range_hint,
)
from .stats import FIT_NAMES, BNPOStats

# Output bytes per block of the CPU broadcast: a block stays in the CPU's caches between the mask's copy into it and
# its scaling, so the output goes to memory once (2-vCPU AMD EPYC: 1-2 MiB blocks cost 1.2x a plain copy, one pass
# 1.35x, 128 KiB blocks 1.5x).
_BLOCK_BYTES = 2 << 20


def _broadcast(scalar: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Outcome scalar (bs,) over the response tokens: (bs, L) in ``dtype``, zero outside the mask.

    The mask (verl's is int64) is copied into the output and scaled in place: a mixed-dtype product would first
    convert the whole mask into a (bs, L) temporary. On CPU block by block of rows (memory blocks, not samples).
    """
    out = torch.empty(response_mask.shape, dtype=dtype, device=response_mask.device)
    factor = scalar.to(dtype).unsqueeze(-1)
    bs, length = out.shape
    rows = max(1, _BLOCK_BYTES // max(1, length * out.element_size())) if out.device.type == "cpu" else bs
    for start in range(0, bs, rows):
        out[start:start + rows].copy_(response_mask[start:start + rows]).mul_(factor[start:start + rows])
    return out


def _empty(response_mask: torch.Tensor, dtype: torch.dtype, cfg: BNPOConfig, components=()) -> tuple:
    """An empty batch: nothing to fit; the normaliser reported is the one a fallback would use."""
    empty = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device)
    alpha, beta = (1.0, 1.0) if cfg.adaptive else (cfg.fixed_alpha, cfg.fixed_beta)
    stats = BNPOStats(0.0, 0.0, 0.0, 0.0, alpha, beta, 0, 0, 0, 0, 0.0, 0.0, "empty_batch" if cfg.adaptive else None)
    return empty, empty, _combine({key: stats for key in components}) if components else stats


def compute_bnpo_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any, cfg: BNPOConfig,
    final_row: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """BNPO outcome advantage of ``token_level_rewards`` (bs, L) (an output's reward: the sum over its tokens).

    response_mask: (bs, L), nonzero on response tokens; rows without any are left out (advantage 0).
    index: (bs,) question uids (numpy array, list or tensor). final_row: optional (bs,) row of each sample's session's
    final output (``select_rows``).
    Returns advantages and returns, (bs, L), equal, in ``advantage_dtype`` of the rewards, zero outside the mask,
    and what the normalisation saw (BNPOStats).
    """
    check_tensors(token_level_rewards=token_level_rewards, response_mask=response_mask)
    check_estimator("bnpo", cfg)
    dtype = advantage_dtype(token_level_rewards.dtype)
    with torch.no_grad():
        bs = token_level_rewards.shape[0]
        if bs == 0:
            return _empty(response_mask, dtype, cfg)
        inverse, num_groups = group_inverse(index, bs, token_level_rewards.device)
        rows = select_rows(response_mask, final_row, inverse)
        scores = outcome_rewards(token_level_rewards)
        s = map_rewards(scores, cfg, keep=rows.keep,
                        explain=lambda outside: range_hint(token_level_rewards, scores, outside, cfg))
        scalar, stats = normalized_outcome(s, inverse, num_groups, cfg, rows.keep)
        advantages = _broadcast(rows.spread(scalar), response_mask, dtype)
    return advantages, advantages, rows.annotate(stats)


def compute_ad_bnpo_advantage(
    components: Mapping[str, torch.Tensor], response_mask: torch.Tensor, index: Any, cfg: BNPOConfig,
    dtype: torch.dtype = torch.float32, final_row: Any = None, token_level_rewards: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """AD-BNPO: each component, reward key -> (bs,) in [reward_min, reward_max], normalised with its own Beta fit,
    then their mean weighted by ``cfg.component_weights`` (default equal). ``dtype``: the rewards'.

    response_mask, index, final_row: as ``compute_bnpo_advantage``'s. token_level_rewards: optional (bs, L), the
    trainer's rewards; ValueError if they carry what the components do not (reward on several tokens, an outcome
    that is no function of the components).
    Returns advantages and returns, (bs, L), equal, and stats: each component's in ``stats.components``, at top level
    the counts and the maxima of weight_max and clamped_frac (no fit).
    """
    if not components:
        raise ValueError(f"ad_bnpo got no reward components; set {_key('components')}.")
    check_tensors(**({} if token_level_rewards is None else {"token_level_rewards": token_level_rewards}),
                  response_mask=response_mask)
    bs, device, keys = response_mask.shape[0], response_mask.device, list(components)
    weights = cfg.component_weights or (1.0,) * len(keys)
    total = sum(weights)
    dtype = advantage_dtype(dtype)
    with torch.no_grad():
        if bs == 0:
            return _empty(response_mask, dtype, cfg, keys)
        inverse, num_groups = group_inverse(index, bs, device)
        rows = select_rows(response_mask, final_row, inverse)
        raw = {key: components[key].to(device=device, dtype=torch.float64) for key in keys}
        mapped = {key: map_rewards(raw[key], cfg, f"'{key}' reward", keep=rows.keep) for key in keys}
        if token_level_rewards is not None:
            outcome = outcome_rewards(token_level_rewards)
            check_outcome_only(token_level_rewards, rows.keep, outcome)
            check_components_explain_outcome(raw, outcome, rows.keep)
        scalar = torch.zeros(bs, dtype=torch.float64, device=device)
        per_component = {}
        for key, weight in zip(keys, weights):  # loops over the K components only
            adv, per_component[key] = normalized_outcome(mapped[key], inverse, num_groups, cfg, rows.keep)
            scalar += (weight / total) * adv
        advantages = _broadcast(rows.spread(scalar), response_mask, dtype)
    return advantages, advantages, rows.annotate(_combine(per_component))


def _combine(per_component: dict[str, BNPOStats]) -> BNPOStats:
    """Top-level AD-BNPO stats: the batch's counts, the maxima of weight_max and clamped_frac, no fit."""
    stats = list(per_component.values())
    return BNPOStats(
        **dict.fromkeys(FIT_NAMES), num_questions=stats[0].num_questions, num_fit=stats[0].num_fit,
        num_singleton=stats[0].num_singleton, num_degenerate=max(st.num_degenerate for st in stats),
        weight_max=max(st.weight_max for st in stats), clamped_frac=max(st.clamped_frac for st in stats),
        fallback=next((st.fallback for st in stats if st.fallback), None), components=per_component,
    )
