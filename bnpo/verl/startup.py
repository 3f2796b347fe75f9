"""Start-up checks of a verl run that uses bnpo / ad_bnpo.

``check_run_config`` runs on the whole verl config before Ray starts (the plugin wraps verl's
``validate_config``, which ``main_ppo``, the legacy TaskRunner and one_step_off_policy's TaskRunner call
first) and again at every advantage step of bnpo's trainer extensions, so a typo in ``algorithm.bnpo``, a
setting bnpo cannot honour, or a verl that changed under bnpo fails at start-up, not after the first rollout.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Optional

from ..core.config import ESTIMATORS, BNPOConfig, _key, check_estimator, config_from_algorithm
from ..core.shaping import KL_ADVICE
from . import compat, hooks
from .estimators import ESTIMATOR_FUNCTIONS

logger = logging.getLogger(__name__)

# Trainer modes of bnpo 0.1, when metrics and ad_bnpo needed a bnpo trainer class.
REMOVED_TRAINER_MODES = {"bnpo_sync": "sync", "bnpo_colocate_async": "colocate_async", "bnpo_separate_async": "separate_async"}


def _check_registered(name: str, load_error: Optional[BaseException]) -> None:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    found = ADV_ESTIMATOR_REGISTRY.get(name)
    if found is not ESTIMATOR_FUNCTIONS[name]:
        why = f"it is registered to {found.__module__}.{found.__qualname__}" if found else "it is not registered"
        detail = f" The plugin failed with: {load_error!r}." if load_error else ""
        raise ValueError(
            f"algorithm.adv_estimator={name} was requested but {why}.{detail} Reinstall bnpo "
            "(pip install -e . / pip install bnpo) and check `python -c \"import verl\"` prints no bnpo warning."
        )


def check_integration(config: Any, load_error: Optional[BaseException] = None) -> None:
    """A bnpo run's start-up: the estimator registered, every trainer extension in place, verl's version."""
    name = str(config.algorithm.adv_estimator)
    _check_registered(name, load_error)
    compat.check_version()
    try:
        compat.import_trainer_modules(config)  # their hooks run now, in this process, if they had not yet
    except ImportError as err:
        raise compat.VerlChanged(f"bnpo cannot find verl's trainer: {err}") from err
    if hooks.FAILED:
        module, err = next(iter(hooks.FAILED.items()))
        raise compat.VerlChanged(
            f"algorithm.adv_estimator={name}: bnpo could not extend {module} ({err}). Without it bnpo would train with "
            "no bnpo/* metrics, no ad_bnpo components and no per-step checks."
        ) from err


def check_run_config(config: Any, load_error: Optional[BaseException] = None, startup: bool = True) -> Optional[BNPOConfig]:
    """Validate the bnpo parts of a full verl config; return the parsed block (None if bnpo is unused).

    ``load_error``: why the plugin failed to load in this process, if it did (reported with the cause).
    ``startup``: also check the integration (``check_integration``); the per-step calls skip that.
    """
    trainer = (config.get("trainer", None) if hasattr(config, "get") else None) or {}
    mode = str((trainer.get("v1", None) or {}).get("trainer_mode", "sync"))
    if mode in REMOVED_TRAINER_MODES:
        raise ValueError(
            f"trainer.v1.trainer_mode={mode} was removed in bnpo 0.2: bnpo logs its metrics and feeds ad_bnpo in "
            f"every verl trainer mode. Set trainer.v1.trainer_mode={REMOVED_TRAINER_MODES[mode]}."
        )
    algorithm = config.get("algorithm") if hasattr(config, "get") else None
    if algorithm is None:
        return None
    name = algorithm.get("adv_estimator", None)
    if name not in ESTIMATORS:
        if algorithm.get("bnpo", None):
            logger.warning("algorithm.bnpo is set but algorithm.adv_estimator=%s; the block is ignored.", name)
        return None
    cfg = config_from_algorithm(algorithm)
    check_estimator(str(name), cfg)
    _check_reward_range(config, str(name), cfg)
    if algorithm.get("use_kl_in_reward", False):
        raise ValueError(
            f"algorithm.use_kl_in_reward=True with algorithm.adv_estimator={name}: it adds a per-token KL penalty to "
            f"the reward, which leaves the declared range [{cfg.reward_min}, {cfg.reward_max}] of BNPO's success rate "
            f"p_hat (and which ad_bnpo's components would drop). {KL_ADVICE}"
        )
    if startup:
        check_integration(config, load_error)
    return cfg


def _check_reward_range(config: Any, name: str, cfg: BNPOConfig) -> None:
    """bnpo.rewards with the format reward scores acc + format in [0, 2]: plain bnpo must declare that range."""
    reward_fn = (config.get("reward", None) or {}).get("custom_reward_function", None) or {}
    path = str(reward_fn.get("path", None) or "")
    ours = path.startswith("pkg://bnpo.rewards") or "bnpo/rewards/" in path.replace("\\", "/")
    kwargs = reward_fn.get("reward_kwargs", None) or {}
    if name == "bnpo" and ours and kwargs.get("format_reward", False) is True and cfg.reward_max < 2:
        raise ValueError(
            f"reward.custom_reward_function.reward_kwargs.format_reward=true makes bnpo.rewards score acc + format, in "
            f"[0, 2], but {_key('reward_max')}={cfg.reward_max}: set +{_key('reward_max')}=2 (or use "
            f"algorithm.adv_estimator=ad_bnpo with {_key('components')}=[acc,format])."
        )


def install_startup_check(load_error: Callable[[], Optional[BaseException]]) -> None:
    """Make verl's ``validate_config`` (called first by main_ppo and the legacy TaskRunner) check bnpo too."""
    import verl.utils.config as verl_config

    original = compat.require(verl_config, "validate_config")
    if getattr(original, "_bnpo_checked", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        check_run_config(config, load_error())
        return original(config, *args, **kwargs)

    validate_config._bnpo_checked = True
    verl_config.validate_config = validate_config
