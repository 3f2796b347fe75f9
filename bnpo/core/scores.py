"""Per-sample scores (pure torch): input checks, outcome rewards, their map to [0, 1], AD-BNPO's components.

BNPO's p_hat is the mean of a bounded outcome reward. A per-token KL penalty (``algorithm.use_kl_in_reward``) or a
length penalty from the reward manager shows up as rewards outside the declared range for bnpo, while ad_bnpo (which
reads its components, not ``token_level_rewards``) would silently drop it: both are errors that name the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np
import torch

from .config import BNPOConfig, _key, check_estimator
from .groups import BNPOInputError

_RANGE_TOLERANCE = 1e-6  # mapped rewards may leave [0, 1] by rounding only (e.g. 0.1 * 3 / 0.3)
KL_ADVICE = ("BNPO needs the bounded outcome reward, so keep algorithm.use_kl_in_reward=False and use "
             "actor_rollout_ref.actor.use_kl_loss=True (the KL term as a loss) instead.")


def advantage_dtype(reward_dtype: torch.dtype) -> torch.dtype:
    """float64 rewards give float64 advantages, every other dtype float32: integer rewards would truncate the
    advantage, float16 overflows beyond 65504 (a weight reaches 1e6), bfloat16 keeps 3 significant digits."""
    return torch.float64 if reward_dtype == torch.float64 else torch.float32


def outcome_rewards(token_level_rewards: torch.Tensor) -> torch.Tensor:
    """Each output's reward, (bs, L) summed over tokens: (bs,) float64.

    Summed in the input's precision (float32 at least), as verl and the reference do: a float64 reduction of a
    float32 tensor first copies the whole (bs, L) operand on CPU, which costs more than the rest of the estimator.
    """
    return token_level_rewards.sum(dim=-1, dtype=advantage_dtype(token_level_rewards.dtype)).to(torch.float64)


def map_rewards(
    scores: torch.Tensor, cfg: BNPOConfig, what: str = "reward", keep: Optional[torch.Tensor] = None,
    explain: Optional[Callable[[torch.Tensor], str]] = None,
) -> torch.Tensor:
    """Affine map of outcome rewards (bs,) from [reward_min, reward_max] to [0, 1]; only the samples in ``keep`` (bs,)
    bool (None: all) are checked, the others map to 0. Non-finite rewards and rewards out of range raise ValueError
    naming the keys, the observed range, how many samples and the first row, then ``explain(outside)``, the cause."""
    s = (scores - cfg.reward_min) / (cfg.reward_max - cfg.reward_min)
    fine = (s >= -_RANGE_TOLERANCE) & (s <= 1 + _RANGE_TOLERANCE)  # NaN and inf fail it too
    if not bool((fine if keep is None else fine | ~keep).all()):
        considered = torch.ones_like(fine) if keep is None else keep
        nonfinite = ~torch.isfinite(scores) & considered
        if bool(nonfinite.any()):
            bad = nonfinite.nonzero().flatten()
            raise ValueError(f"{bad.numel()} of {scores.numel()} samples have a non-finite {what} (first: row "
                             f"{int(bad[0])}, value {scores[bad[0]].item()}); fix the reward function so it returns "
                             "finite scores.")
        outside = ~fine & considered
        bad, observed = outside.nonzero().flatten(), scores[considered]
        raise ValueError(
            f"{bad.numel()} of {scores.numel()} samples have a {what} outside the declared range "
            f"[{_key('reward_min')}={cfg.reward_min}, {_key('reward_max')}={cfg.reward_max}]: observed range "
            f"[{observed.min().item()}, {observed.max().item()}] (first: row {int(bad[0])}). Set "
            f"{_key('reward_min')} / {_key('reward_max')} to the range your reward function returns."
            + (explain(outside) if explain is not None else "")
        )
    s = s.clamp(0.0, 1.0)
    return s if keep is None else torch.where(keep, s, 0.0)


def check_tensors(**tensors: Any) -> None:
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise BNPOInputError(f"{name} must be a torch.Tensor of shape (batch_size, response_length), got "
                                 f"{type(value).__name__}; pass torch.as_tensor({name}).")
        if value.is_complex():
            raise BNPOInputError(f"{name} has the complex dtype {value.dtype}; pass real numbers.")
    shapes = [f"{name} {tuple(value.shape)}" for name, value in tensors.items()]
    first = next(iter(tensors.values()))
    if first.dim() != 2 or any(value.shape != first.shape for value in tensors.values()):
        raise ValueError(f"{' and '.join(shapes)} must all be (batch_size, response_length).")


def component_rewards(
    non_tensor_batch: Mapping[str, Any] | None, cfg: BNPOConfig, num_samples: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-sample AD-BNPO component rewards (bs,) float64, read from ``non_tensor_batch``."""
    check_estimator("ad_bnpo", cfg)
    batch = non_tensor_batch if non_tensor_batch is not None else {}
    out = {}
    for key in cfg.components:
        if key not in batch:
            raise ValueError(f"ad_bnpo component '{key}' (from {_key('components')}) is not among the per-sample "
                             f"batch fields {sorted(batch.keys())}; make the reward function return a dict with "
                             f"'{key}', or fix {_key('components')}.")
        try:
            values = np.asarray(batch[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ad_bnpo component '{key}' has non-numeric values ({err}); it must be one number per "
                             "sample.") from None
        if values.shape != (num_samples,):
            raise ValueError(f"ad_bnpo component '{key}' has shape {values.shape} for {num_samples} samples; it must "
                             f"be one number per sample, shape ({num_samples},).")
        out[key] = torch.from_numpy(values).to(device)
    return out


def shaped_rows(token_level_rewards: torch.Tensor, total: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(bs,) bool: rows of (bs, L) whose reward sits on more than one token; ``total`` (bs,): their sums, if known.

    With one nonzero token v (or none) a row's sum is exactly max + min (v + 0); with several it is not, unless one
    positive and one negative token remain (no shaping verl has). Counting nonzeros would build a (bs, L) temporary.
    """
    if token_level_rewards.shape[-1] == 0:
        return torch.zeros(token_level_rewards.shape[0], dtype=torch.bool, device=token_level_rewards.device)
    rewards = token_level_rewards.to(torch.promote_types(token_level_rewards.dtype, torch.float32))
    high, low = rewards.amax(dim=-1).double(), rewards.amin(dim=-1).double()
    total = rewards.sum(dim=-1).double() if total is None else total.double()
    return (total - (high + low)).abs() > 1e-6 * torch.maximum(high.abs(), low.abs())


def _first_spread(token_level_rewards: torch.Tensor, spread: torch.Tensor) -> str:
    """The first of the ``spread`` (bs,) rows and how many of its tokens carry reward."""
    row = int(spread.nonzero()[0])
    return f"(first: row {row}, {int((token_level_rewards[row] != 0).sum())} tokens)"


def range_hint(token_level_rewards: torch.Tensor, scores: torch.Tensor, outside: torch.Tensor, cfg: BNPOConfig) -> str:
    """The most likely reason why the outcome rewards (bs,) ``scores`` leave the declared range on ``outside``."""
    spread = shaped_rows(token_level_rewards, scores) & outside
    if bool(spread.any()):
        return (
            f" {int(spread.sum())} of these samples have reward on several tokens "
            f"{_first_spread(token_level_rewards, spread)}: token-level reward shaping, most likely a KL penalty from "
            f"algorithm.use_kl_in_reward=True. {KL_ADVICE}"
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
    spread = spread if keep is None else spread & keep
    if bool(spread.any()):
        raise ValueError(f"ad_bnpo got token-level rewards on several tokens in {int(spread.sum())} samples "
                         f"{_first_spread(token_level_rewards, spread)}: token-level shaping, most likely a KL penalty "
                         "from algorithm.use_kl_in_reward=True, which ad_bnpo's per-sample components cannot carry and "
                         f"would drop. {KL_ADVICE}")


def check_components_explain_outcome(
    components: Mapping[str, torch.Tensor], outcome: torch.Tensor, keep: Optional[torch.Tensor]
) -> None:
    """ad_bnpo reads only its components (bs,): the outcome reward (bs,) must be a function of them, or ad_bnpo would
    drop what else the score carries. Only samples in ``keep`` (bs,) bool (None: all) are compared: verl's padding
    rows copy a real sample's components beside a zero reward."""
    keys = list(components)
    values = torch.stack([components[key].to(torch.float64) for key in keys], dim=1)  # (bs, K)
    outcome = outcome.to(torch.float64)
    rows = torch.arange(outcome.shape[0], device=outcome.device)
    if keep is not None:
        values, outcome, rows = values[keep], outcome[keep], rows[keep]
    if outcome.numel() == 0:
        return
    # each row's cell (equal component vectors, equal ids): one 1-D unique per column, renumbered column by column
    # (ids stay below bs); unique(dim=0) sorts whole rows and costs several times more
    cell = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    for column in values.unbind(dim=1):  # loops over the K components only
        _, code = torch.unique(column, return_inverse=True)
        _, cell = torch.unique(cell * (int(code.max()) + 1) + code, return_inverse=True)
    low = outcome.new_full((int(cell.max()) + 1,), float("inf")).scatter_reduce_(0, cell, outcome, reduce="amin")
    high = torch.full_like(low, float("-inf")).scatter_reduce_(0, cell, outcome, reduce="amax")
    differ = (high - low) > 1e-6 * max(1.0, float(outcome.abs().max()))
    if not bool(differ.any()):
        return
    in_cell = (cell == int(differ.nonzero()[0])).nonzero().flatten()
    a, b = in_cell[torch.argmin(outcome[in_cell])], in_cell[torch.argmax(outcome[in_cell])]
    shared = {key: float(values[a, i]) for i, key in enumerate(keys)}
    raise ValueError(
        f"ad_bnpo would drop part of the reward: rows {int(rows[a])} and {int(rows[b])} have the same components "
        f"{shared} but outcome rewards {float(outcome[a]):g} and {float(outcome[b]):g} (token_level_rewards summed). "
        f"ad_bnpo reads only {_key('components')}={keys}, so whatever else the score carries (a length or overlong "
        "penalty, a KL term, another reward) would be lost. Return that term from the reward function as one more "
        f"component and list it in {_key('components')}, or use algorithm.adv_estimator=bnpo on the total score."
    )
