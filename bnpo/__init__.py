"""BNPO / AD-BNPO (Beta Normalization Policy Optimization) advantage estimators for verl.

``bnpo.core`` is the math (torch only); ``bnpo.verl`` registers it with verl (loaded by verl's plugin
entry point); ``bnpo.rewards`` holds the paper's math rewards; ``bnpo.demo`` the CPU demo and probe.
Importing ``bnpo`` imports the core only.
"""

from .core import *  # noqa: F401,F403  (the core's public names)
from .core import __all__ as _core_all

__version__ = "0.2.0"

__all__ = [*_core_all, "__version__"]
