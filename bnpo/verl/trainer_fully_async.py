"""bnpo in verl's fully_async_policy trainer: checked at construction, ``fit_halflife`` refused.

``FullyAsyncTrainer`` (a Ray actor, ``verl/experimental/fully_async_policy/fully_async_trainer.py``) computes
advantages through ``SeparateRayPPOTrainer._fit_compute_advantage``, which ``bnpo.verl.trainer_separation``
extends (metrics, components). Two things differ from the other trainers:
- its entry point (``fully_async_main``) never calls verl's ``validate_config``, where bnpo's start-up check
  runs, and its ``__init__`` does not call ``RayPPOTrainer``'s, so its own construction runs bnpo's per-run check
  (``bnpo.verl.contract``), for this trainer's verl modules only (none of the v1 trainer's);
- it overrides ``_save_checkpoint`` and numbers its checkpoints by parameter version, with its own
  ``load_checkpoint``; bnpo does not extend them, so ``algorithm.bnpo.fit_halflife`` (whose pooled fit must
  be saved with the checkpoint) is refused at construction rather than silently lost on resume.
"""

from __future__ import annotations

import functools
from types import ModuleType

from ..core.config import _key
from . import compat, contract


def install(fully_async_trainer: ModuleType) -> None:
    """Check bnpo runs when verl's ``FullyAsyncTrainer`` is constructed."""
    actor = compat.require_all(fully_async_trainer)["FullyAsyncTrainer"]
    cls = getattr(actor, "__ray_actor_class__", actor)

    def checked(original):
        @functools.wraps(original)
        def __init__(self, config, *args, **kwargs):
            if compat.uses_bnpo(config):
                halflife = contract.checked_config(self, "fully_async_policy", config).fit_halflife
                if halflife is not None:
                    raise ValueError(
                        f"{_key('fit_halflife')}={halflife} is not supported by verl's fully_async trainer: it saves "
                        "and resumes checkpoints by parameter version in its own _save_checkpoint / load_checkpoint, "
                        "where bnpo cannot keep the pooled fit. Leave it unset (the paper's per-batch fit), or train "
                        "with main_ppo or one_step_off_policy."
                    )
            original(self, config, *args, **kwargs)

        return __init__

    compat.patch(cls, "__init__", checked)
