"""Per-sample scores (pure torch): input checks, outcome rewards, their map to [0, 1], AD-BNPO's components, and
the recognition of reward shaping, so that bnpo says what went wrong instead of guessing.

BNPO's p_hat is the mean of a bounded outcome reward. Trainers can add things to that reward: a per-token
KL penalty (``algorithm.use_kl_in_reward``), a length or overlong penalty in the reward manager. For bnpo
they show up as rewards outside the declared range; ad_bnpo, which reads its reward components and not
``token_level_rewards``, would silently drop them. These checks turn both into errors that name the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np
import torch

from .config import BNPOConfig, _key, check_estimator
from .groups import BNPOInputError

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
    s = (scores - cfg.reward_min) / (cfg.reward_max - cfg.reward_min)
    # one test for the common case (NaN and inf fail it too); the errors below say which check failed
    fine = (s >= -_RANGE_TOLERANCE) & (s <= 1 + _RANGE_TOLERANCE)
    if keep is not None:
        fine |= ~keep
    if not bool(fine.all()):
        _refuse(scores, s, cfg, what, keep, explain)
    s = s.clamp(0.0, 1.0)
    return s if keep is None else torch.where(keep, s, 0.0)


def _refuse(
    scores: torch.Tensor, s: torch.Tensor, cfg: BNPOConfig, what: str, keep: Optional[torch.Tensor],
    explain: Optional[Callable[[torch.Tensor], str]],
) -> None:
    """``map_rewards``' errors: non-finite rewards first, then rewards outside the declared range."""
    considered = torch.ones_like(scores, dtype=torch.bool) if keep is None else keep
    nonfinite = ~torch.isfinite(scores) & considered
    if bool(nonfinite.any()):
        bad = nonfinite.nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a non-finite {what} (first: row {int(bad[0])}, "
            f"value {scores[bad[0]].item()}); fix the reward function so it returns finite scores."
        )
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


def component_rewards(
    non_tensor_batch: Mapping[str, Any] | None, cfg: BNPOConfig, num_samples: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-sample AD-BNPO component rewards (bs,) float64, read from ``non_tensor_batch``."""
    check_estimator("ad_bnpo", cfg)
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


KL_ADVICE = (
    "BNPO needs the bounded outcome reward, so keep algorithm.use_kl_in_reward=False and use "
    "actor_rollout_ref.actor.use_kl_loss=True (the KL term as a loss) instead."
)


def shaped_rows(token_level_rewards: torch.Tensor, total: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(bs,) bool: rows whose reward sits on more than one token (an outcome reward sits on one).

    ``total`` (bs,), optional: the rows' sums when the caller has them (``advantage.outcome_rewards``).

    With one nonzero token v (or none) a row's sum is exactly max + min (v + 0); with reward on several
    tokens it is not, unless exactly one positive and one negative token remain (no shaping verl has makes
    that pattern). Vectorised reductions; counting nonzeros would build a (bs, L) temporary.
    """
    if token_level_rewards.shape[-1] == 0:
        return torch.zeros(token_level_rewards.shape[0], dtype=torch.bool, device=token_level_rewards.device)
    rewards = token_level_rewards.to(torch.promote_types(token_level_rewards.dtype, torch.float32))
    high, low = rewards.amax(dim=-1).double(), rewards.amin(dim=-1).double()
    total = rewards.sum(dim=-1).double() if total is None else total.double()
    scale = torch.maximum(high.abs(), low.abs())
    return (total - (high + low)).abs() > 1e-6 * scale


def _first_spread(token_level_rewards: torch.Tensor, spread: torch.Tensor) -> str:
    """The first of the ``spread`` (bs,) rows and how many of its tokens carry reward."""
    row = int(spread.nonzero()[0])
    return f"(first: row {row}, {int((token_level_rewards[row] != 0).sum())} tokens)"


def range_hint(token_level_rewards: torch.Tensor, scores: torch.Tensor, outside: torch.Tensor, cfg: BNPOConfig) -> str:
    """The most likely reason why the outcome rewards (bs,) ``scores`` leave the declared range on ``outside``."""
    spread = shaped_rows(token_level_rewards, scores) & outside
    if bool(spread.any()):
        return (
            f" {int(spread.sum())} of these samples have reward on several tokens {_first_spread(token_level_rewards, spread)}: "
            f"token-level reward shaping, most likely a KL penalty from algorithm.use_kl_in_reward=True. {KL_ADVICE}"
        )
    low, high = float(scores[outside].min()), float(scores[outside].max())
    if cfg.reward_min == 0 and cfg.reward_max == 1 and 1 < high <= 2 and low >= 0:
        return (
            f" A maximum of {high:g} is what a score of acc + format gives (bnpo.rewards.compute_score with "
            f"format_reward=true ranges over [0, 2]): set {_key('reward_max')}=2, or use ad_bnpo."
        )
    if low < cfg.reward_min:
        return (
            " Values below the declared minimum usually come from a penalty the reward manager adds to the score "
            f"(an overlong or length penalty): declare the penalised range in {_key('reward_min')}."
        )
    return ""


def check_outcome_only(
    token_level_rewards: torch.Tensor, keep: Optional[torch.Tensor], total: Optional[torch.Tensor] = None
) -> None:
    """ad_bnpo: refuse rewards spread over several tokens of a sample (``keep`` (bs,) bool, None: all)."""
    spread = shaped_rows(token_level_rewards, total)
    if keep is not None:
        spread = spread & keep
    if bool(spread.any()):
        raise ValueError(
            f"ad_bnpo got token-level rewards on several tokens in {int(spread.sum())} samples "
            f"{_first_spread(token_level_rewards, spread)}: "
            "token-level shaping, most likely a KL penalty from algorithm.use_kl_in_reward=True, which ad_bnpo's per-sample components cannot carry and would "
            f"drop. {KL_ADVICE}"
        )


def _cells(values: torch.Tensor) -> torch.Tensor:
    """(bs,) id of each row's component vector (bs, K): equal rows, equal ids.

    One 1-D ``unique`` per column, ids combined and renumbered column by column (so they stay below bs):
    ``unique(dim=0)`` sorts whole rows and costs several times more.
    """
    cell = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    for column in values.unbind(dim=1):  # loops over the K components only
        _, code = torch.unique(column, return_inverse=True)
        _, cell = torch.unique(cell * (int(code.max()) + 1) + code, return_inverse=True)
    return cell


def check_components_explain_outcome(
    components: Mapping[str, torch.Tensor], outcome: torch.Tensor, keep: Optional[torch.Tensor]
) -> None:
    """ad_bnpo reads only its components: the outcome reward (bs,) must be a function of them.

    Samples with the same component values and different outcome rewards mean the score carries
    something the components do not (a length penalty, a KL term, another reward), which ad_bnpo would
    drop. Only samples in ``keep`` (bs,) bool (None: all) are compared: verl's padding rows copy a real
    sample's components beside a zero reward.
    """
    keys = list(components)
    values = torch.stack([components[key].to(torch.float64) for key in keys], dim=1)  # (bs, K)
    rows = torch.arange(outcome.shape[0], device=outcome.device)
    if keep is not None:
        values, outcome, rows = values[keep], outcome[keep], rows[keep]
    if outcome.numel() == 0:
        return
    cell = _cells(values)
    cells = int(cell.max()) + 1
    low = torch.full((cells,), float("inf"), dtype=torch.float64, device=outcome.device)
    high = torch.full_like(low, float("-inf"))
    low.scatter_reduce_(0, cell, outcome.to(torch.float64), reduce="amin")
    high.scatter_reduce_(0, cell, outcome.to(torch.float64), reduce="amax")
    tolerance = 1e-6 * max(1.0, float(outcome.abs().max()))
    differ = (high - low) > tolerance
    if not bool(differ.any()):
        return
    first = int(differ.nonzero()[0])
    in_cell = (cell == first).nonzero().flatten()
    a = in_cell[torch.argmin(outcome[in_cell])]
    b = in_cell[torch.argmax(outcome[in_cell])]
    shared = {key: float(values[a, i]) for i, key in enumerate(keys)}
    raise ValueError(
        f"ad_bnpo would drop part of the reward: rows {int(rows[a])} and {int(rows[b])} have the same components "
        f"{shared} but outcome rewards {float(outcome[a]):g} and {float(outcome[b]):g} (token_level_rewards summed). "
        f"ad_bnpo reads only {_key('components')}={keys}, so whatever else the score carries (a length or overlong "
        "penalty, a KL term, another reward) would be lost. Return that term from the reward function as one more "
        f"component and list it in {_key('components')}, or use algorithm.adv_estimator=bnpo on the total score."
    )
