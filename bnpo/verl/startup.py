"""Start-up checks of a verl run that uses bnpo / ad_bnpo, so that a typo in ``algorithm.bnpo``, a setting bnpo cannot
honour, an unsupported verl or a verl that changed under bnpo fails at start-up, not after the first rollout.

``check_run_config`` runs before Ray starts (the plugin wraps verl's ``validate_config`` and the package's copy
``verl.utils.validate_config``, which main_ppo and the TaskRunners call first) and when a trainer bnpo extends is built,
in the process that trains (``bnpo.verl.contract``).
"""

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

# Trainer modes of bnpo 0.1, when metrics and ad_bnpo needed a bnpo trainer class.
REMOVED_TRAINER_MODES = {"bnpo_sync": "sync", "bnpo_colocate_async": "colocate_async", "bnpo_separate_async": "separate_async"}
REGISTRATION = "verl.trainer.ppo.core_algos.register_adv_est"  # the place bnpo.verl.plugin records a failed registration at


def _check_registered(name: str) -> None:
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
    """A bnpo run's start-up in this process: verl's version supported; the verl modules of the run's trainer
    (``trainer``, else the one ``config`` selects) importable under the names bnpo hooks, so their extensions run
    here; bnpo's estimator registered; nothing of the plugin failed."""
    name = str(config.algorithm.adv_estimator)
    compat.check_version()
    compat.import_trainer_modules(trainer or compat.selected_trainer(config))
    _check_registered(name)
    hooks.refuse_if_failed(name)


def installation_problems() -> list[str]:
    """What would stop any bnpo / ad_bnpo run in this process, whatever its config: an unsupported verl, a part of
    bnpo's plugin that failed, an estimator that is not bnpo's; [] when none. ``import verl`` first (it loads bnpo's
    plugin), or use ``node_problems``."""
    problems = []
    try:
        compat.check_version()
    except compat.VerlChanged as err:
        problems.append(str(err))
    for name in ESTIMATOR_FUNCTIONS:
        try:
            _check_registered(name)
        except (ValueError, compat.VerlChanged) as err:
            problems.append(str(err))
    return problems + hooks.failures()


def node_problems() -> list[str]:
    """``installation_problems`` of a fresh verl process, e.g. a Ray task pinned to each node of a cluster by a
    pre-flight. On a node where bnpo does not import, Ray cannot even load this function: the task fails there."""
    import verl  # noqa: F401  (loads bnpo's plugin, as in every verl worker)

    return installation_problems()


def check_run_config(config: Any, startup: bool = True, trainer: Optional[str] = None) -> Optional[BNPOConfig]:
    """Validate the bnpo parts of a full verl config; return the parsed block (None if bnpo is unused).

    ``startup``: also check the integration (``check_integration``, for ``trainer`` or the one ``config`` selects).
    """
    section = (config.get("trainer", None) if hasattr(config, "get") else None) or {}
    mode = str((section.get("v1", None) or {}).get("trainer_mode", "sync"))
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
    check_component_names(cfg.components or ())
    _check_reward_range(config, str(name), cfg)
    if algorithm.get("use_kl_in_reward", False):
        raise ValueError(
            f"algorithm.use_kl_in_reward=True with algorithm.adv_estimator={name}: it adds a per-token KL penalty to "
            f"the reward, which leaves the declared range [{cfg.reward_min}, {cfg.reward_max}] of BNPO's success rate "
            f"p_hat (and which ad_bnpo's components would drop). {KL_ADVICE}"
        )
    if startup:
        check_integration(config, trainer)
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


def install_startup_check() -> None:
    """Make verl's ``validate_config`` (called first by main_ppo and the legacy TaskRunner) check bnpo too: the one in
    ``verl.utils.config`` and the package's copy ``verl.utils.validate_config`` (bound before the plugin loads)."""
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
