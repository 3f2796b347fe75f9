"""Start-up checks of a verl run that uses bnpo / ad_bnpo.

``check_run_config`` runs on the whole verl config before Ray starts (the plugin wraps verl's
``validate_config``, which ``main_ppo`` calls first) and again when the bnpo trainers are built, so
a typo in ``algorithm.bnpo`` or a missing setting fails at start-up, not after the first rollout.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from verl.trainer.config import AlgoConfig

from .config import BNPOConfig, _key, config_from_algorithm

logger = logging.getLogger(__name__)

ESTIMATORS = ("bnpo", "ad_bnpo")

# v1 trainer modes registered by bnpo.verl_trainer -> the verl mode each one extends.
TRAINER_MODES = {
    "bnpo_sync": "sync",
    "bnpo_colocate_async": "colocate_async",
    "bnpo_separate_async": "separate_async",
}


@dataclass
class BNPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus the ``bnpo`` block.

    verl 0.9.1's trainers keep ``config.algorithm`` a DictConfig, where the block needs nothing. Code
    that converts it with ``omega_conf_to_dataclass`` rejects the unknown ``bnpo`` key; for such code set
    ``algorithm._target_=bnpo.verl_config.BNPOAlgoConfig``.
    """

    bnpo: dict[str, Any] = field(default_factory=dict)


def _bnpo_mode_for(mode: str) -> str:
    candidate = f"bnpo_{mode}"
    return candidate if candidate in TRAINER_MODES else "bnpo_sync"


def _check_registered(name: str) -> None:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from . import verl_plugin

    ours = verl_plugin.ESTIMATOR_FUNCTIONS[name]
    if ADV_ESTIMATOR_REGISTRY.get(name) is not ours:
        found = ADV_ESTIMATOR_REGISTRY.get(name)
        why = f"it is registered to {found.__module__}.{found.__qualname__}" if found else "it is not registered"
        detail = f" The plugin failed with: {verl_plugin.LOAD_ERROR!r}." if verl_plugin.LOAD_ERROR else ""
        raise ValueError(
            f"algorithm.adv_estimator={name} was requested but {why}.{detail} Reinstall bnpo "
            "(pip install -e . / pip install bnpo) and check `python -c \"import verl\"` prints no bnpo warning."
        )


def check_run_config(config: Any) -> Optional[BNPOConfig]:
    """Validate the bnpo parts of a full verl config; return the parsed block (None if bnpo is unused)."""
    algorithm = config.get("algorithm") if hasattr(config, "get") else None
    if algorithm is None:
        return None
    name = algorithm.get("adv_estimator", None)
    if name not in ESTIMATORS:
        if algorithm.get("bnpo", None):
            logger.warning("algorithm.bnpo is set but algorithm.adv_estimator=%s; the block is ignored.", name)
        return None
    _check_registered(str(name))
    cfg = config_from_algorithm(algorithm)
    if name == "ad_bnpo" and not cfg.components:
        raise ValueError(
            f"algorithm.adv_estimator=ad_bnpo needs {_key('components')}, the reward keys your reward function "
            f"returns, e.g. +{_key('components')}='[acc,format]'."
        )
    trainer = config.get("trainer", None) or {}
    if trainer.get("use_v1", True):
        mode = str(trainer.get("v1", {}).get("trainer_mode", "sync"))
        if mode not in TRAINER_MODES:
            hint = f"set trainer.v1.trainer_mode={_bnpo_mode_for(mode)}"
            if name == "ad_bnpo":
                raise ValueError(
                    f"algorithm.adv_estimator=ad_bnpo with trainer.v1.trainer_mode={mode}: verl's {mode} trainer does "
                    f"not hand the reward components to the estimator; {hint}."
                )
            logger.warning("adv_estimator=bnpo with trainer.v1.trainer_mode=%s: bnpo/* metrics are not logged; %s.", mode, hint)
    return cfg


def install_startup_check() -> None:
    """Make verl's ``validate_config`` (called first by main_ppo and the legacy TaskRunner) check bnpo too."""
    import verl.utils.config as verl_config

    original = verl_config.validate_config
    if getattr(original, "_bnpo_checked", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        check_run_config(config)
        return original(config, *args, **kwargs)

    validate_config._bnpo_checked = True
    verl_config.validate_config = validate_config
