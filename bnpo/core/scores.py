"""Per-sample scores: input checks, outcome rewards, their map to [0, 1], AD-BNPO's components (pure torch)."""

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
