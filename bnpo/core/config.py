"""The ``bnpo`` block of verl's algorithm config: a frozen dataclass, coerced and validated once, when it is built.

Every error names the full Hydra key (``algorithm.bnpo.<key>``), the offending value and what is allowed, so a typo
fails at start-up rather than after the first rollout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional

CONFIG_PREFIX = "algorithm.bnpo"
ESTIMATORS = ("bnpo", "ad_bnpo")
BASELINES = ("group_mean", "eb_loo")
RETIRED = ("was retired in bnpo 0.3: the gradient-noise probe found it no better than the options kept "
           "(docs/baselines.md); remove it.")
# Beyond these the arithmetic is meaningless rather than merely unusual: a reward range whose width overflows maps
# every reward to 0; log B(alpha, beta) from lgamma differences loses its digits (1e6 keeps about 9); a weight beyond
# 1e30 can make float32 advantages overflow.
REWARD_LIMIT = WEIGHT_LIMIT = 1e30
BETA_PARAM_LIMIT = 1e6
_BETA_PARAM = (BETA_PARAM_LIMIT,
               "a Beta distribution parameter (null for adaptive BNPO); beyond 1e6 log B loses its precision")
_BOUNDS = {  # the numbers that must lie in (0, bound], with why
    "fixed_alpha": _BETA_PARAM,
    "fixed_beta": _BETA_PARAM,
    "max_weight": (WEIGHT_LIMIT, "the clamp on 1 / f_N (reference: 1e6); beyond 1e30 float32 advantages can overflow"),
}


def _key(name: str) -> str:
    return f"{CONFIG_PREFIX}.{name}"


@dataclass(frozen=True)
class BNPOConfig:
    """Settings of the bnpo / ad_bnpo estimators (all optional; defaults are the paper's).

    reward_min, reward_max: the declared reward range, mapped affinely to [0, 1]. fixed_alpha, fixed_beta: both None
    -> adaptive (alpha, beta) = (1 + a/3, 1 + b/3) (the paper); both set -> fixed, e.g. (1, 1) = REINFORCE with
    baseline, (1.5, 1.5) = GRPO * pi/8. max_weight: clamp on the weight 1 / f_N(p_hat) (the reference's: 1e6).
    components: AD-BNPO reward keys (per-sample arrays in verl's non_tensor_batch), component_weights: their optional
    non-negative weights (default equal). baseline: "group_mean" (the paper: p_hat) or "eb_loo" (p(q)'s credibility
    estimate from the question's other samples; ``bnpo.core.baselines``).
    Numbers may be given as numeric strings (not booleans), lists as any sequence (not a string or a mapping).
    """

    reward_min: float = 0.0
    reward_max: float = 1.0
    fixed_alpha: Optional[float] = None
    fixed_beta: Optional[float] = None
    max_weight: float = 1e6
    components: Optional[tuple[str, ...]] = None
    component_weights: Optional[tuple[float, ...]] = None
    baseline: str = "group_mean"

    def __post_init__(self) -> None:
        for f in fields(self):  # frozen: the coerced values go in through object.__setattr__
            value = getattr(self, f.name)
            if not ((value is None and f.default is None) or f.name == "baseline"):  # None stays where it's the default
                object.__setattr__(self, f.name, _coerce(f.name, value))
        _validate(self)

    @property
    def adaptive(self) -> bool:
        return self.fixed_alpha is None


KEYS = tuple(f.name for f in fields(BNPOConfig))


def _as_float(name: str, value: Any) -> float:
    """A finite float from a number or a numeric string; booleans are refused (True is not 1.0 here)."""
    if isinstance(value, bool):
        raise ValueError(f"{_key(name)}={value!r} is a boolean; set it to a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_key(name)}={value!r} is not a number; set it to a finite float.") from None
    if not math.isfinite(number):
        raise ValueError(f"{_key(name)}={value!r} is not finite; set it to a finite float.")
    return number


def _coerce(name: str, value: Any) -> Any:
    """``value`` of field ``name`` in the field's type; lists from any sequence but a string or a mapping."""
    if name not in ("components", "component_weights"):
        return _as_float(name, value)
    example = "[acc,format]" if name == "components" else "[1,1]"
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{_key(name)}={value!r} is a string; give a list, e.g. +{_key(name)}='{example}' on the "
                         "command line.")
    if isinstance(value, Mapping) or hasattr(value, "keys") or not hasattr(value, "__iter__"):
        raise ValueError(f"{_key(name)}={value!r} must be a list, e.g. {example}.")
    if name == "component_weights":
        return tuple(_as_float(name, v) for v in value)
    items = list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"{_key(name)}={items!r}: every entry must be a non-empty string (a reward key).")
    return tuple(items)


def _validate(cfg: BNPOConfig) -> None:
    for name in ("reward_min", "reward_max"):
        if not abs(getattr(cfg, name)) <= REWARD_LIMIT:
            raise ValueError(f"{_key(name)}={getattr(cfg, name)} is beyond ±{REWARD_LIMIT:g}; declare the range your "
                             "reward returns.")
    if not cfg.reward_max > cfg.reward_min:
        raise ValueError(f"{_key('reward_max')}={cfg.reward_max} must be greater than {_key('reward_min')}="
                         f"{cfg.reward_min}: they declare the range of the outcome reward, which is mapped affinely to "
                         "[0, 1].")
    if (cfg.fixed_alpha is None) != (cfg.fixed_beta is None):
        raise ValueError(f"{_key('fixed_alpha')}={cfg.fixed_alpha} and {_key('fixed_beta')}={cfg.fixed_beta}: set "
                         "both (a fixed Beta normaliser, e.g. 1 and 1 for REINFORCE with baseline) or neither "
                         "(adaptive BNPO).")
    for name, (high, why) in _BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None and not 0 < value <= high:
            raise ValueError(f"{_key(name)}={value} must be in (0, {high:g}]: {why}.")
    if cfg.baseline not in BASELINES:
        raise ValueError(f"{_key('baseline')}={cfg.baseline!r} must be one of {list(BASELINES)}."
                         + (f" posterior_mean {RETIRED}" if cfg.baseline == "posterior_mean" else ""))
    components, weights = cfg.components, cfg.component_weights
    if components is not None and not components:
        raise ValueError(f"{_key('components')}=[] is empty; list the reward keys of AD-BNPO, e.g. [acc, format].")
    if components is not None and len(set(components)) != len(components):
        raise ValueError(f"{_key('components')}={list(components)} has duplicates; list each reward key once.")
    if weights is None:
        return
    if components is None:
        raise ValueError(f"{_key('component_weights')}={list(weights)} is set but {_key('components')} is not; "
                         "list the AD-BNPO reward keys first.")
    if len(weights) != len(components):
        raise ValueError(f"{_key('component_weights')}={list(weights)} has {len(weights)} entries but "
                         f"{_key('components')}={list(components)} has {len(components)}; give one weight per "
                         "component.")
    if any(not 0 <= w <= WEIGHT_LIMIT for w in weights) or not sum(weights) > 0:
        raise ValueError(f"{_key('component_weights')}={list(weights)} must be non-negative (at most {WEIGHT_LIMIT:g}; "
                         "only their ratios matter) with a positive sum.")


def parse_bnpo_block(block: Any) -> BNPOConfig:
    """A BNPOConfig from the ``bnpo`` block (dict, DictConfig or None); unknown keys raise, null is the default."""
    if block is None or isinstance(block, BNPOConfig):
        return block or BNPOConfig()
    if isinstance(block, (str, bytes)) or not hasattr(block, "items"):
        raise ValueError(f"{CONFIG_PREFIX} must be a mapping of {list(KEYS)}, got {type(block).__name__}: {block!r}.")
    raw = {str(k): v for k, v in block.items()}
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {[_key(k) for k in unknown]}; allowed keys are {[_key(k) for k in KEYS]}."
                         + (f" {_key('fit_halflife')} {RETIRED}" if "fit_halflife" in unknown else ""))
    return BNPOConfig(**{k: v for k, v in raw.items() if v is not None})


def config_from_algorithm(config: Any) -> BNPOConfig:
    """Read the ``bnpo`` block of verl's algorithm config (DictConfig, AlgoConfig, dict, BNPOConfig or None)."""
    if config is None or isinstance(config, BNPOConfig):
        return config or BNPOConfig()
    if isinstance(config, (str, bytes)) or not hasattr(config, "get"):
        raise ValueError("config must be verl's algorithm config (a DictConfig, verl's AlgoConfig or a dict with an "
                         f"optional 'bnpo' block), a bnpo.BNPOConfig, or None; got {type(config).__name__}: "
                         f"{config!r}.")
    return parse_bnpo_block(config.get("bnpo", None))


def check_estimator(name: str, cfg: BNPOConfig) -> None:
    """The settings that only one of the two estimators reads: ad_bnpo needs ``components``, bnpo takes none."""
    if name == "ad_bnpo" and not cfg.components:
        raise ValueError(f"algorithm.adv_estimator=ad_bnpo needs {_key('components')}, the reward keys to decompose, "
                         f"e.g. +{_key('components')}='[acc,format]' (keys of the dict your reward function returns).")
    if name == "bnpo" and (cfg.components is not None or cfg.component_weights is not None):
        raise ValueError(f"{_key('components')}={list(cfg.components or ())} is set, but only ad_bnpo reads it: set "
                         f"algorithm.adv_estimator=ad_bnpo to decompose the reward, or remove {_key('components')} and "
                         f"{_key('component_weights')}.")
