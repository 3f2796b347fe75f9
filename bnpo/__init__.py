"""BNPO / AD-BNPO (Beta Normalization Policy Optimization) advantage estimators for verl.

``bnpo.core`` is the math (torch only); ``bnpo.verl`` registers it with verl (loaded by verl's plugin
entry point); ``bnpo.rewards`` holds the paper's math rewards; ``bnpo.demo`` the CPU demo (the gradient-noise probe is
``bnpo_probe``, a package of the repository outside the distribution).
The core's public names are ``bnpo``'s too, imported on first use: the reward's worker processes import
``bnpo.rewards`` without loading torch.
"""

import importlib

__version__ = "0.3.0"


def __getattr__(name: str):
    core = importlib.import_module(".core", __name__)
    if name == "__all__":  # ``from bnpo import *``
        return [*core.__all__, "__version__"]
    if name in core.__all__:
        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *importlib.import_module(".core", __name__).__all__})
