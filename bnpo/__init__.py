"""BNPO / AD-BNPO (Beta Normalization Policy Optimization) advantage estimators for verl.

The math core (this package minus ``verl_plugin``) is pure torch and never imports verl.
"""

from .advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage, map_rewards, normalized_outcome
from .beta import beta_log_density, fit_beta_moments, inverse_density_weight, optimal_alpha_beta
from .config import BNPOConfig, config_from_algorithm, parse_bnpo_block
from .stats import BNPOStats, last_stats, pop_last_stats

__version__ = "0.1.0"

__all__ = [
    "BNPOConfig",
    "BNPOStats",
    "beta_log_density",
    "compute_ad_bnpo_advantage",
    "compute_bnpo_advantage",
    "config_from_algorithm",
    "fit_beta_moments",
    "inverse_density_weight",
    "last_stats",
    "map_rewards",
    "normalized_outcome",
    "optimal_alpha_beta",
    "parse_bnpo_block",
    "pop_last_stats",
]
