"""bnpo's verl layer: everything that touches verl (imports ``bnpo.core``; the core never imports it).

``plugin`` (loaded by verl's ``verl.plugins`` entry point) registers the estimators (``estimators``) and extends
verl's trainers when a process imports them (``hooks``): ``trainer_v1`` (the v1 ``PPOTrainer``) and ``trainer_legacy``
(``RayPPOTrainer`` and its subclasses, the separated trainers included), each keeping the one trainer contract of
``contract``, with ``checkpoint`` for the pooled fits and ``metrics`` for the logged names; ``startup`` checks a bnpo
run before Ray starts and ``compat`` names every verl place relied on and the verl versions supported; ``context`` is
what a trainer's advantage step shares with the estimators; ``algo_config`` is verl's algorithm dataclass with a
``bnpo`` block. The subpackage ``preflight`` checks a run of the paper's recipe before it touches a GPU.

Importing ``bnpo.verl`` imports ``context`` only (no verl): ``from bnpo.verl import estimator_scope``.
"""

from .context import EstimatorScope, current_scope, estimator_scope, fit_state_of

__all__ = ["EstimatorScope", "current_scope", "estimator_scope", "fit_state_of"]
