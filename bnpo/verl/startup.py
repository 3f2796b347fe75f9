"""Start-up checks of a verl run that uses bnpo / ad_bnpo, so that a bad config or verl fails before the first rollout:
before Ray starts (the plugin wraps verl's ``validate_config``) and where a trainer is built (``contract``)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

from ..core.config import ESTIMATORS, BNPOConfig, _key, check_estimator, config_from_algorithm
from ..core.scores import KL_ADVICE
from . import compat, hooks
from .estimators import ESTIMATOR_FUNCTIONS
from .metrics import check_component_names

logger = logging.getLogger(__name__)

REGISTRATION = "verl.trainer.ppo.core_algos.register_adv_est"  # where bnpo.verl.plugin records a failed registration


def check_registered(name: str) -> None:
    import verl.trainer.ppo.core_algos as core_algos

    found = compat.require(core_algos, "ADV_ESTIMATOR_REGISTRY").get(name)
    if found is not ESTIMATOR_FUNCTIONS[name]:
        why = f"it is registered to {found.__module__}.{found.__qualname__}" if found else "it is not registered"
        error = hooks.FAILED.get(REGISTRATION)
        detail = f" The plugin's registration failed with: {error!r}." if error else ""
        raise ValueError(
            f"algorithm.adv_estimator={name} was requested but {why}.{detail} Reinstall bnpo "
            "(pip install -e . / pip install bnpo) and check `python -c \"import verl\"` prints no bnpo warning."
        )


def check_integration(config: Any, trainer: Optional[str] = None) -> None:
    """A bnpo run's start-up in this process: verl, the modules of its trainer, bnpo's estimator and plugin."""
    name = str(config.algorithm.adv_estimator)
    compat.check_version()
    compat.import_trainer_modules(trainer or compat.selected_trainer(config))
    check_registered(name)
    hooks.refuse_if_failed(name)


def check_run_config(config: Any, startup: bool = True, trainer: Optional[str] = None) -> Optional[BNPOConfig]:
    """The parsed ``algorithm.bnpo`` of a full verl config, validated (None if bnpo is unused); ``startup``: with
    ``check_integration`` for ``trainer`` (default: the one ``config`` selects)."""
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
    check_component_names(cfg.components or ())
    # bnpo.rewards with the format reward scores acc + format in [0, 2]: plain bnpo must declare that range
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
    if algorithm.get("use_kl_in_reward", False):
        raise ValueError(
            f"algorithm.use_kl_in_reward=True with algorithm.adv_estimator={name}: it adds a per-token KL penalty to "
            f"the reward, which leaves the declared range [{cfg.reward_min}, {cfg.reward_max}] of BNPO's success rate "
            f"p_hat (and which ad_bnpo's components would drop). {KL_ADVICE}"
        )
    if startup:
        check_integration(config, trainer)
    return cfg


def install_startup_check() -> None:
    """Make verl's ``validate_config`` check bnpo too, with its copy ``verl.utils.validate_config`` (bound earlier)."""
    import verl.utils as verl_utils
    import verl.utils.config as verl_config

    compat.require(verl_config, "validate_config")  # VerlChanged naming the place, before anything is patched
    package_copy = getattr(verl_utils, "validate_config", None)

    def checked(original):
        @functools.wraps(original)
        def validate_config(config, *args, **kwargs):
            check_run_config(config)
            return original(config, *args, **kwargs)

        return validate_config

    wrapper = compat.patch(verl_config, "validate_config", checked)
    if package_copy is not None and getattr(package_copy, "_bnpo_original", package_copy) is wrapper._bnpo_original:
        verl_utils.validate_config = wrapper
