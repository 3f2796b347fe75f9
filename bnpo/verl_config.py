"""Deprecated since bnpo 0.2 (removed in 0.3): ``bnpo.verl.algo_config.BNPOAlgoConfig``.

Saved configs that name ``algorithm._target_=bnpo.verl_config.BNPOAlgoConfig`` keep working for this release.
"""

import warnings

from .verl.algo_config import BNPOAlgoConfig  # noqa: F401

warnings.warn(
    "bnpo.verl_config is deprecated since bnpo 0.2 and will be removed in 0.3: set "
    "algorithm._target_=bnpo.verl.algo_config.BNPOAlgoConfig.",
    DeprecationWarning,
    stacklevel=2,
)
