"""bnpo's verl layer: everything that touches verl (the core never imports it).

``plugin`` (verl's ``verl.plugins`` entry point) registers ``estimators`` and, through ``hooks``, extends verl's
trainers when a process imports them (``trainer_v1``, ``trainer_legacy``), each keeping ``contract``.
``startup`` and ``compat`` check a run and the verl it runs on; ``preflight`` checks the paper's recipe before any GPU.
Importing ``bnpo.verl`` imports ``context`` only (no verl): ``from bnpo.verl import estimator_scope``.
"""

from .context import EstimatorScope, current_scope, estimator_scope

__all__ = ["EstimatorScope", "current_scope", "estimator_scope"]
