"""Deprecated since bnpo 0.2 (removed in 0.3): the verl plugin is ``bnpo.verl.plugin``.

verl loads the new module through bnpo's ``verl.plugins`` entry point; on older verl set
``VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin``.
"""

import warnings

from .verl.plugin import LOAD_ERROR  # noqa: F401  (importing it loads the plugin)

warnings.warn(
    "bnpo.verl_plugin is deprecated since bnpo 0.2 and will be removed in 0.3: use bnpo.verl.plugin "
    "(VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin; verl >= 0.9 loads it through bnpo's entry point).",
    DeprecationWarning,
    stacklevel=2,
)
