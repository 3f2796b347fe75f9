"""BNPO's math (torch only: never imports verl or the rewards): Beta density and fit (``beta``), the samples that
count and their groups (``groups``), scores and their checks (``scores``), baselines (``baselines``), one reward's
normalisation (``normalize``), the two estimators (``advantage``), the ``algorithm.bnpo`` block (``config``) and
statistics (``stats``)."""

from .advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage
from .beta import beta_log_density, fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig, config_from_algorithm, parse_bnpo_block
from .groups import BNPOInputError
from .normalize import normalized_outcome
from .scores import map_rewards
from .stats import BNPOStats

__all__ = [
    "BNPOConfig", "BNPOInputError", "BNPOStats", "beta_log_density",
    "compute_ad_bnpo_advantage", "compute_bnpo_advantage", "config_from_algorithm", "fit_beta_moments",
    "inverse_density_weight", "map_rewards", "normalized_outcome", "optimal_alpha_beta", "parse_bnpo_block",
]
