"""BNPO / AD-BNPO (Beta Normalization Policy Optimization) advantage estimators for verl.

``bnpo.core`` is the math (torch only); ``bnpo.verl`` registers it with verl (loaded by verl's plugin
entry point); ``bnpo.rewards`` holds the paper's math rewards; ``bnpo.demo`` the CPU demo (the gradient-noise probe is
``bnpo_probe``, a package of the repository outside the distribution).
Importing ``bnpo`` imports the core only.
"""

from .core import *  # noqa: F401,F403  (the core's public names)
from .core import __all__ as _core_all

__version__ = "0.3.0"

__all__ = [*_core_all, "__version__"]
