"""BNPO and AD-BNPO outcome advantages (pure torch; never imports verl).

For question q with samples o and rewards mapped to s in [0, 1]:

    p_hat(q) = mean_o s(q, o),   A(q, o) = (s(q, o) - p_hat(q)) / f_N(p_hat(q); alpha, beta)

with (alpha, beta) = (1 + a/3, 1 + b/3) (clamped at 1) from a method-of-moments Beta(a, b) fit over
the batch's p_hat, or fixed by configuration. AD-BNPO averages this over several reward components.
Degenerate inputs (BNPO_SPEC.md section 4) are handled as documented in ``normalized_outcome``; which
samples enter the groups at all (verl's padding rows, multi-output sessions) in ``select_rows``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from .beta import fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig, _key
from .groups import BNPOInputError, group_inverse, group_stats
from .pooling import MomentPool, pool_for
from .shaping import check_components_explain_outcome, check_outcome_only, range_hint
from .stats import BNPOStats

# Mapped rewards may leave [0, 1] by rounding only (e.g. 0.1 * 3 / 0.3).
_RANGE_TOLERANCE = 1e-6


def advantage_dtype(reward_dtype: torch.dtype) -> torch.dtype:
    """float64 rewards give float64 advantages; every other dtype float32.

    Integer and bool rewards would truncate the advantage; float16 overflows beyond 65504, which a
    weight of up to ``max_weight`` (1e6) reaches; bfloat16 keeps 3 significant digits.
    """
    return torch.float64 if reward_dtype == torch.float64 else torch.float32


def outcome_rewards(token_level_rewards: torch.Tensor) -> torch.Tensor:
    """Outcome reward of each output: (bs, L) token rewards summed over tokens, (bs,) float64.

    Summed in the input's precision (float32 at least), as verl's estimators and the reference do:
    a float64 reduction of a float32 tensor first copies the whole (bs, L) operand on CPU, which
    costs more than the rest of the estimator.
    """
    accumulate = advantage_dtype(token_level_rewards.dtype)
    return token_level_rewards.sum(dim=-1, dtype=accumulate).to(torch.float64)


def map_rewards(
    scores: torch.Tensor,
    cfg: BNPOConfig,
    what: str = "reward",
    keep: Optional[torch.Tensor] = None,
    explain: Optional[Callable[[torch.Tensor], str]] = None,
) -> torch.Tensor:
    """Affine map of outcome rewards (bs,) from [reward_min, reward_max] to [0, 1], with checks.

    Only the samples in ``keep`` (bs,) bool (None: all) are checked; the others map to 0. Raises
    ValueError for non-finite rewards or rewards outside the declared range, naming the config keys,
    the observed range, how many samples are affected and the first offending row, followed by
    ``explain(outside)``: the likely cause.
    """
    considered = torch.ones_like(scores, dtype=torch.bool) if keep is None else keep
    nonfinite = ~torch.isfinite(scores) & considered
    if bool(nonfinite.any()):
        bad = nonfinite.nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a non-finite {what} (first: row {int(bad[0])}, "
            f"value {scores[bad[0]].item()}); fix the reward function so it returns finite scores."
        )
    s = (scores - cfg.reward_min) / (cfg.reward_max - cfg.reward_min)
    outside = ((s < -_RANGE_TOLERANCE) | (s > 1 + _RANGE_TOLERANCE)) & considered
    if bool(outside.any()):
        bad = outside.nonzero().flatten()
        observed = scores[considered]
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a {what} outside the declared range "
            f"[{_key('reward_min')}={cfg.reward_min}, {_key('reward_max')}={cfg.reward_max}]: observed range "
            f"[{observed.min().item()}, {observed.max().item()}] (first: row {int(bad[0])}). Set "
            f"{_key('reward_min')} / {_key('reward_max')} to the range your reward function returns."
            + (explain(outside) if explain is not None else "")
        )
    s = s.clamp(0.0, 1.0)
    return s if keep is None else torch.where(keep, s, 0.0)


@dataclass(frozen=True)
class SampleRows:
    """Which samples of a batch carry an outcome of their own.

    keep: (bs,) bool, the samples that enter the groups and the Beta fit; None when all do.
    source: (bs,) long, the sample whose advantage each sample takes (its session's final output);
        None when every sample takes its own.
    """

    keep: Optional[torch.Tensor]
    source: Optional[torch.Tensor]
    num_excluded: int
    num_broadcast: int

    def spread(self, scalar: torch.Tensor) -> torch.Tensor:
        """Per-sample advantages (bs,) with each session's final advantage copied to its other outputs."""
        return scalar if self.source is None else scalar[self.source]

    def annotate(self, stats: BNPOStats) -> BNPOStats:
        """``stats`` (and its components') with this batch's row counts."""
        components = {key: self.annotate(sub) for key, sub in stats.components.items()}
        return replace(stats, num_excluded=self.num_excluded, num_broadcast=self.num_broadcast, components=components)


def select_rows(response_mask: torch.Tensor, final_row: Any = None) -> SampleRows:
    """The samples that count, from the response mask (bs, L) and, optionally, agent-loop sessions.

    A sample without response tokens (all-zero mask, as verl's padding rows) is left out: advantage 0.
    ``final_row`` (bs,): for each sample, the row of its session's final output (verl's multi-output agent
    loops). Only final outputs enter the groups, once per session; the session's other outputs take the
    final output's advantage, as verl does for grpo (``compute_advantage_for_multi_trajectories``).
    """
    bs = response_mask.shape[0]
    if response_mask.shape[-1] == 0:
        keep = torch.zeros(bs, dtype=torch.bool, device=response_mask.device)
    else:
        keep = response_mask.amax(dim=-1) > 0  # amax: vectorised on CPU, where any() over int64 is not
    num_excluded = bs - int(keep.sum())
    source, num_broadcast = None, 0
    if final_row is not None:
        rows = final_row if isinstance(final_row, torch.Tensor) else torch.from_numpy(np.asarray(final_row))
        source = rows.to(device=response_mask.device, dtype=torch.long)
        if source.shape != (bs,) or bool(((source < 0) | (source >= bs)).any()):
            raise BNPOInputError(f"final_row must be ({bs},) row indices into the batch; got {tuple(source.shape)}.")
        final = source == torch.arange(bs, device=source.device)
        num_broadcast = int((keep & ~final).sum())
        keep = keep & final
        if num_broadcast == 0:
            source = None
    if num_excluded == 0 and num_broadcast == 0:
        keep = None
    return SampleRows(keep, source, num_excluded, num_broadcast)


def normalized_outcome(
    s: torch.Tensor,
    inverse: torch.Tensor,
    num_groups: int,
    cfg: BNPOConfig,
    keep: Optional[torch.Tensor] = None,
    pool: Optional[MomentPool] = None,
) -> tuple[torch.Tensor, BNPOStats]:
    """Scalar BNPO advantage (bs,) of mapped rewards ``s`` (bs,) in [0, 1], float64.

    ``inverse`` (bs,) holds each sample's question id in 0..num_groups-1; ``keep`` (bs,) bool, optional,
    the samples that enter the statistics (the others get 0); ``pool``, optional, pools the fit's moments
    with earlier batches (``cfg.fit_halflife``).

    Degenerate cases: a singleton question (one sample) has no baseline: advantage 0, and it is
    kept out of the Beta fit. With the group-mean baseline a question whose rewards are all equal has
    advantage exactly 0. If the fit has fewer than two questions or zero variance, (alpha, beta) = (1, 1)
    (REINFORCE with baseline) and the prior of the posterior-mean baseline is (0, 0), i.e. the group mean.
    """
    groups = group_stats(s, inverse, num_groups, keep)
    present = groups.count > 0
    singleton = groups.count == 1
    in_fit = groups.p_hat[groups.count >= 2]
    fit = fit_beta_moments(in_fit) if pool is None else pool.add(in_fit)
    if cfg.adaptive:
        alpha, beta = optimal_alpha_beta(fit.a, fit.b)
    else:
        alpha = s.new_tensor(cfg.fixed_alpha)
        beta = s.new_tensor(cfg.fixed_beta)

    if cfg.baseline == "posterior_mean":
        centre = posterior_mean(groups.count, groups.p_hat, fit.a, fit.b)
        silent = groups.count < 2  # all-solved and all-failed questions now carry a signal
    else:
        centre = groups.p_hat
        silent = (groups.count < 2) | groups.constant  # (G,): questions that carry no learning signal
    weight, clamped = inverse_density_weight(centre, alpha, beta, cfg.max_weight)
    silent_sample = silent[inverse] if keep is None else silent[inverse] | ~keep
    advantage = torch.where(silent_sample, 0.0, weight[inverse] * (s - centre[inverse]))

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
        num_questions=int(present.sum()),
        num_fit=fit.num_questions,
        num_singleton=int(singleton.sum()),
        num_degenerate=int((groups.constant & (groups.count >= 2)).sum()),
        weight_max=float(weight[informative].max()) if any_informative else 0.0,
        clamped_frac=float((groups.count * clamped)[informative].sum() / samples) if any_informative else 0.0,
        fallback=fit.fallback if cfg.adaptive else None,
        fit_weight=pool.weight if pool is not None else float(fit.num_questions),
    )
    return advantage, stats


def posterior_mean(count: torch.Tensor, p_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[p(q) | the question's m scores] under a Beta(a, b) prior: (a + m p_hat) / (a + b + m), (G,).

    The prior is clamped at (0, 0) from below (nu < 0 gives a, b < 0, which are no prior); with a > 0 and
    b > 0 the mean lies strictly inside (0, 1), where f_N is positive and finite, so an all-failed or
    all-solved question gets a finite weight. With (0, 0) it is p_hat. Questions with no samples get p_hat.
    """
    a, b = a.clamp(min=0.0), b.clamp(min=0.0)
    shrunk = (a + count * p_hat) / (a + b + count).clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(count > 0, shrunk, p_hat)


def _broadcast(scalar: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Outcome scalar (bs,) over the response tokens: (bs, L) in ``dtype``, zero outside the mask."""
    # One (bs, L) buffer, written twice: the mask (verl's is int64) copied into ``dtype``, then scaled in
    # place. A mixed-dtype product would convert the mask into a temporary first: twice the memory.
    mask = response_mask.to(dtype, copy=True, memory_format=torch.contiguous_format)
    return mask.mul_(scalar.to(dtype).unsqueeze(-1))


def check_tensors(**tensors: Any) -> None:
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise BNPOInputError(
                f"{name} must be a torch.Tensor of shape (batch_size, response_length), got {type(value).__name__}; "
                f"pass torch.as_tensor({name})."
            )
        if value.is_complex():
            raise BNPOInputError(f"{name} has the complex dtype {value.dtype}; pass real numbers.")
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    first = next(iter(tensors.values()))
    if first.dim() != 2 or any(value.shape != first.shape for value in tensors.values()):
        raise ValueError(f"{' and '.join(f'{n} {s}' for n, s in shapes.items())} must all be (batch_size, response_length).")


def _empty_stats(cfg: BNPOConfig) -> BNPOStats:
    """An empty batch: nothing to fit; the normaliser reported is the one a fallback would use."""
    alpha, beta = (1.0, 1.0) if cfg.adaptive else (cfg.fixed_alpha, cfg.fixed_beta)
    fallback = "empty_batch" if cfg.adaptive else None
    return BNPOStats(0.0, 0.0, 0.0, 0.0, alpha, beta, 0, 0, 0, 0, 0.0, 0.0, fallback)


def compute_bnpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    cfg: BNPOConfig,
    final_row: Any = None,
    pool: Optional[MomentPool] = None,
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """BNPO outcome advantage.

    Args:
        token_level_rewards: (bs, L); an output's reward is the sum over its tokens.
        response_mask: (bs, L), nonzero on response tokens; rows without any are left out (advantage 0).
        index: (bs,) question uids (numpy array, list or tensor).
        cfg: estimator settings.
        final_row: optional (bs,) row of each sample's session's final output (see ``select_rows``).
        pool: with ``cfg.fit_halflife``, the moment pool to use (default: this process's pool "bnpo").

    Returns:
        advantages: (bs, L) in ``advantage_dtype`` of the rewards, zero outside the mask.
        returns: (bs, L), equal to advantages.
        stats: what the normalisation saw (see BNPOStats).
    """
    check_tensors(token_level_rewards=token_level_rewards, response_mask=response_mask)
    if cfg.components is not None or cfg.component_weights is not None:
        raise ValueError(
            f"{_key('components')}={list(cfg.components or ())} is set, but only ad_bnpo reads it: set "
            f"algorithm.adv_estimator=ad_bnpo to decompose the reward, or remove {_key('components')} and "
            f"{_key('component_weights')}."
        )
    dtype = advantage_dtype(token_level_rewards.dtype)
    with torch.no_grad():
        bs = token_level_rewards.shape[0]
        if bs == 0:
            empty = torch.zeros(token_level_rewards.shape, dtype=dtype, device=token_level_rewards.device)
            return empty, empty, _empty_stats(cfg)
        rows = select_rows(response_mask, final_row)
        inverse, num_groups = group_inverse(index, bs, token_level_rewards.device)
        scores = outcome_rewards(token_level_rewards)
        s = map_rewards(scores, cfg, keep=rows.keep,
                        explain=lambda outside: range_hint(token_level_rewards, scores, outside, cfg))
        if cfg.fit_halflife is not None and pool is None:
            pool = pool_for("bnpo", cfg.fit_halflife)
        scalar, stats = normalized_outcome(s, inverse, num_groups, cfg, rows.keep, pool)
        advantages = _broadcast(rows.spread(scalar), response_mask, dtype)
    return advantages, advantages, rows.annotate(stats)


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
            values = np.asarray(non_tensor_batch[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ad_bnpo component '{key}' has non-numeric values ({err}); it must be one number per sample.") from None
        if values.shape != (num_samples,):
            raise ValueError(
                f"ad_bnpo component '{key}' has shape {values.shape} for {num_samples} samples; it must be one number "
                f"per sample, shape ({num_samples},)."
            )
        out[key] = torch.from_numpy(values).to(device)
    return out


def compute_ad_bnpo_advantage(
    components: Mapping[str, torch.Tensor],
    response_mask: torch.Tensor,
    index: Any,
    cfg: BNPOConfig,
    dtype: torch.dtype = torch.float32,
    final_row: Any = None,
    token_level_rewards: Optional[torch.Tensor] = None,
    pools: Optional[Mapping[str, MomentPool]] = None,
) -> tuple[torch.Tensor, torch.Tensor, BNPOStats]:
    """AD-BNPO: each component normalised with its own Beta fit, then the (weighted) mean.

    Args:
        components: reward key -> (bs,) per-sample component reward, in [reward_min, reward_max].
        response_mask: (bs, L); rows without response tokens are left out (advantage 0).
        index: (bs,) question uids.
        cfg: settings; ``component_weights`` (default equal) are normalised to sum to 1.
        dtype: dtype of the rewards; the advantages come in ``advantage_dtype(dtype)``.
        final_row: optional (bs,) row of each sample's session's final output (see ``select_rows``).
        token_level_rewards: optional (bs, L), the rewards the trainer would otherwise use; ValueError if they
            carry something the components do not: reward on several tokens (token-level shaping) or an
            outcome that is not a function of the components (see ``bnpo.shaping``).
        pools: with ``cfg.fit_halflife``, a moment pool per component (default: this process's pools
            "ad_bnpo/<component>").

    Returns:
        advantages, returns: (bs, L), equal; stats: the mean of the components' fits at top level
        (their average alpha, beta, ...) and each component's own statistics in ``stats.components``.
    """
    if not components:
        raise ValueError(f"ad_bnpo got no reward components; set {_key('components')}.")
    check_tensors(response_mask=response_mask)
    bs = response_mask.shape[0]
    keys = list(components)
    weights = cfg.component_weights or (1.0,) * len(keys)
    total = sum(weights)
    dtype = advantage_dtype(dtype)
    with torch.no_grad():
        if bs == 0:
            empty = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device)
            return empty, empty, _empty_stats(cfg)
        rows = select_rows(response_mask, final_row)
        inverse, num_groups = group_inverse(index, bs, response_mask.device)
        raw = {key: components[key].to(device=response_mask.device, dtype=torch.float64) for key in keys}
        mapped = {key: map_rewards(raw[key], cfg, f"'{key}' reward", keep=rows.keep) for key in keys}
        if token_level_rewards is not None:
            check_tensors(token_level_rewards=token_level_rewards, response_mask=response_mask)
            outcome = outcome_rewards(token_level_rewards)
            check_outcome_only(token_level_rewards, rows.keep, outcome)
            check_components_explain_outcome(raw, outcome, rows.keep)
        scalar = torch.zeros(bs, dtype=torch.float64, device=response_mask.device)
        per_component = {}
        for key, weight in zip(keys, weights):  # loops over the K components only
            pool = None
            if cfg.fit_halflife is not None:
                pool = pools[key] if pools is not None else pool_for(f"ad_bnpo/{key}", cfg.fit_halflife)
            adv, per_component[key] = normalized_outcome(mapped[key], inverse, num_groups, cfg, rows.keep, pool)
            scalar += (weight / total) * adv
        advantages = _broadcast(rows.spread(scalar), response_mask, dtype)
    return advantages, advantages, rows.annotate(_combine(per_component, weights))


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
        fit_weight=mean("fit_weight"),
        components=per_component,
    )
