"""BNPO and AD-BNPO outcome advantages (pure torch; never imports verl).

For question q with samples o and rewards mapped to s in [0, 1]:

    p_hat(q) = mean_o s(q, o),   A(q, o) = (s(q, o) - p_hat(q)) / f_N(p_hat(q); alpha, beta)

with (alpha, beta) = (1 + a/3, 1 + b/3) (clamped at 1) from a method-of-moments Beta(a, b) fit over
the batch's p_hat, or fixed by configuration. AD-BNPO averages this over several reward components.
Degenerate inputs (BNPO_SPEC.md section 4) are handled as documented in ``normalized_outcome``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .beta import fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig, _key
from .groups import group_inverse, group_stats
from .stats import BNPOStats

# Mapped rewards may leave [0, 1] by rounding only (e.g. 0.1 * 3 / 0.3).
_RANGE_TOLERANCE = 1e-6


def outcome_rewards(token_level_rewards: torch.Tensor) -> torch.Tensor:
    """Outcome reward of each output: (bs, L) token rewards summed over tokens, (bs,) float64.

    Summed in the input's precision (float32 at least), as verl's estimators and the reference do:
    a float64 reduction of a float32 tensor first copies the whole (bs, L) operand on CPU, which
    costs more than the rest of the estimator. Half-precision inputs accumulate in float32.
    """
    accumulate = torch.promote_types(token_level_rewards.dtype, torch.float32)
    return token_level_rewards.sum(dim=-1, dtype=accumulate).to(torch.float64)


def map_rewards(scores: torch.Tensor, cfg: BNPOConfig, what: str = "reward") -> torch.Tensor:
    """Affine map of outcome rewards (bs,) from [reward_min, reward_max] to [0, 1], with checks.

    Raises ValueError for non-finite rewards or rewards outside the declared range, naming the
    config keys, the observed range, how many samples are affected and the first offending row.
    """
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a non-finite {what} (first: row {int(bad[0])}, "
            f"value {scores[bad[0]].item()}); fix the reward function so it returns finite scores."
        )
    s = (scores - cfg.reward_min) / (cfg.reward_max - cfg.reward_min)
    outside = (s < -_RANGE_TOLERANCE) | (s > 1 + _RANGE_TOLERANCE)
    if bool(outside.any()):
        bad = outside.nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a {what} outside the declared range "
            f"[{_key('reward_min')}={cfg.reward_min}, {_key('reward_max')}={cfg.reward_max}]: observed range "
            f"[{scores.min().item()}, {scores.max().item()}] (first: row {int(bad[0])}). Set "
            f"{_key('reward_min')} / {_key('reward_max')} to the range your reward function returns."
        )
    return s.clamp(0.0, 1.0)


def normalized_outcome(
    s: torch.Tensor, inverse: torch.Tensor, num_groups: int, cfg: BNPOConfig
) -> tuple[torch.Tensor, BNPOStats]:
    """Scalar BNPO advantage (bs,) of mapped rewards ``s`` (bs,) in [0, 1], float64.

    ``inverse`` (bs,) holds each sample's question id in 0..num_groups-1.

    Degenerate cases: a singleton question (one sample) has no baseline: advantage 0, and it is
    kept out of the Beta fit. A question whose rewards are all equal has advantage exactly 0. If the
    fit has fewer than two questions or zero variance, (alpha, beta) = (1, 1) (REINFORCE with baseline).
    """
    groups = group_stats(s, inverse, num_groups)
    singleton = groups.count < 2
    fit = fit_beta_moments(groups.p_hat[~singleton])
    if cfg.adaptive:
        alpha, beta = optimal_alpha_beta(fit.a, fit.b)
    else:
        alpha = s.new_tensor(cfg.fixed_alpha)
        beta = s.new_tensor(cfg.fixed_beta)
    weight, clamped = inverse_density_weight(groups.p_hat, alpha, beta, cfg.max_weight)

    silent = singleton | groups.constant  # (G,): questions that carry no learning signal
    centred = torch.where(silent[inverse], torch.zeros_like(s), s - groups.p_hat[inverse])
    advantage = weight[inverse] * centred

    informative = ~silent
    samples = groups.count[informative].sum()
    any_informative = bool(informative.any())
    stats = BNPOStats(
        mu=float(fit.mu),
        var=float(fit.var),
        a=float(fit.a),
        b=float(fit.b),
        alpha=float(alpha),
        beta=float(beta),
        num_questions=num_groups,
        num_fit=fit.num_questions,
        num_singleton=int(singleton.sum()),
        num_degenerate=int((groups.constant & ~singleton).sum()),
        weight_max=float(weight[informative].max()) if any_informative else 0.0,
        clamped_frac=float((groups.count * clamped)[informative].sum() / samples) if any_informative else 0.0,
        fallback=fit.fallback if cfg.adaptive else None,
    )
    return advantage, stats


def _broadcast(scalar: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Outcome scalar (bs,) over the response tokens: (bs, L) in ``dtype``, zero outside the mask."""
    # One (bs, L) buffer, written twice: the mask (verl's is int64) copied into ``dtype``, then scaled in
    # place. A mixed-dtype product would convert the mask into a temporary first: twice the memory.
    mask = response_mask.to(dtype, copy=True, memory_format=torch.contiguous_format)
    return mask.mul_(scalar.to(dtype).unsqueeze(-1))


def _check_shapes(rewards: torch.Tensor, response_mask: torch.Tensor) -> None:
    if rewards.dim() != 2 or response_mask.shape != rewards.shape:
        raise ValueError(
            f"token_level_rewards {tuple(rewards.shape)} and response_mask {tuple(response_mask.shape)} must both "
            "be (batch_size, response_length)."
        )


def _empty_stats(cfg: BNPOConfig) -> BNPOStats:
    """An empty batch: nothing to fit; the normaliser reported is the one a fallback would use."""
    alpha, beta = (1.0, 1.0) if cfg.adaptive else (cfg.fixed_alpha, cfg.fixed_beta)
    fallback = "empty_batch" if cfg.adaptive else None
    return BNPOStats(0.0, 0.0, 0.0, 0.0, alpha, beta, 0, 0, 0, 0, 0.0, 0.0, fallback)


def compute_bnpo_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any, cfg: BNPOConfig
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """BNPO outcome advantage.

    Args:
        token_level_rewards: (bs, L); an output's reward is the sum over its tokens.
        response_mask: (bs, L), 1 on response tokens.
        index: (bs,) question uids (numpy array, list or tensor).
        cfg: estimator settings.

    Returns:
        advantages: (bs, L) in the dtype of ``token_level_rewards``, zero outside the mask.
        returns: (bs, L), equal to advantages.
        stats: what the normalisation saw (see BNPOStats).
    """
    _check_shapes(token_level_rewards, response_mask)
    with torch.no_grad():
        bs = token_level_rewards.shape[0]
        if bs == 0:
            empty = torch.zeros_like(token_level_rewards)
            return empty, empty, _empty_stats(cfg)
        inverse, num_groups = group_inverse(index, bs, token_level_rewards.device)
        s = map_rewards(outcome_rewards(token_level_rewards), cfg)
        scalar, stats = normalized_outcome(s, inverse, num_groups, cfg)
        advantages = _broadcast(scalar, response_mask, token_level_rewards.dtype)
    return advantages, advantages, stats


def component_rewards(
    non_tensor_batch: Mapping[str, Any] | None, cfg: BNPOConfig, num_samples: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-sample AD-BNPO component rewards (bs,) float64, read from ``non_tensor_batch``."""
    if not cfg.components:
        raise ValueError(
            f"ad_bnpo needs {_key('components')}: the reward keys to decompose, e.g. "
            f"+{_key('components')}='[acc,format]' (keys of the dict your reward function returns)."
        )
    available = sorted(non_tensor_batch.keys()) if non_tensor_batch is not None else []
    out = {}
    for key in cfg.components:
        if non_tensor_batch is None or key not in non_tensor_batch:
            raise ValueError(
                f"ad_bnpo component '{key}' (from {_key('components')}) is not among the per-sample batch fields "
                f"{available}; make the reward function return a dict with '{key}', or fix {_key('components')}."
            )
        try:
            values = np.asarray(non_tensor_batch[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ad_bnpo component '{key}' has non-numeric values ({err}); it must be one number per sample.") from None
        if values.shape[0] != num_samples:
            raise ValueError(f"ad_bnpo component '{key}' has {values.shape[0]} values for {num_samples} samples.")
        out[key] = torch.from_numpy(values).to(device)
    return out


def compute_ad_bnpo_advantage(
    components: Mapping[str, torch.Tensor],
    response_mask: torch.Tensor,
    index: Any,
    cfg: BNPOConfig,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """AD-BNPO: each component normalised with its own Beta fit, then the (weighted) mean.

    Args:
        components: reward key -> (bs,) per-sample component reward, in [reward_min, reward_max].
        response_mask: (bs, L).
        index: (bs,) question uids.
        cfg: settings; ``component_weights`` (default equal) are normalised to sum to 1.
        dtype: dtype of the returned advantages.

    Returns:
        advantages, returns: (bs, L), equal; stats: the mean of the components' fits at top level
        (their average alpha, beta, ...) and each component's own statistics in ``stats.components``.
    """
    if not components:
        raise ValueError(f"ad_bnpo got no reward components; set {_key('components')}.")
    bs = response_mask.shape[0]
    keys = list(components)
    weights = cfg.component_weights or (1.0,) * len(keys)
    total = sum(weights)
    with torch.no_grad():
        if bs == 0:
            empty = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device)
            return empty, empty, _empty_stats(cfg)
        inverse, num_groups = group_inverse(index, bs, response_mask.device)
        scalar = torch.zeros(bs, dtype=torch.float64, device=response_mask.device)
        per_component = {}
        for key, weight in zip(keys, weights):  # loops over the K components only
            s = map_rewards(components[key].to(device=response_mask.device, dtype=torch.float64), cfg, f"'{key}' reward")
            adv, per_component[key] = normalized_outcome(s, inverse, num_groups, cfg)
            scalar += (weight / total) * adv
        advantages = _broadcast(scalar, response_mask, dtype)
    return advantages, advantages, _combine(per_component, weights)


def _combine(per_component: dict[str, BNPOStats], weights) -> BNPOStats:
    """Top-level AD-BNPO stats: weighted means of the components' numbers, max of weight_max."""
    total = sum(weights)
    stats = list(per_component.values())

    def mean(name: str) -> float:
        return sum(w * getattr(st, name) for w, st in zip(weights, stats)) / total

    first = stats[0]
    return BNPOStats(
        mu=mean("mu"), var=mean("var"), a=mean("a"), b=mean("b"), alpha=mean("alpha"), beta=mean("beta"),
        num_questions=first.num_questions, num_fit=first.num_fit, num_singleton=first.num_singleton,
        num_degenerate=max(st.num_degenerate for st in stats),
        weight_max=max(st.weight_max for st in stats),
        clamped_frac=max(st.clamped_frac for st in stats),
        fallback=next((st.fallback for st in stats if st.fallback), None),
        components=per_component,
    )
