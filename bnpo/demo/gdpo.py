"""GDPO in verl's v1 trainer: verl's own ``gdpo``, fed the reward components. Only verl's legacy trainer hands
``gdpo`` the components; the v1 trainer's batch has ``uid``, ``response_mask`` and the scores only, so ``gdpo`` fails
there (``KeyError: 'prompts'``; docs/demo.md). ``gdpo_v1`` calls the same verl function, unchanged, with the
components the demo's runner fetched through bnpo's ``reward_fields``, in an ``estimator_scope`` (``session``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage, register_adv_est

from bnpo.verl.context import current_scope

NAME = "gdpo_v1"


@register_adv_est(NAME)
def compute_gdpo_v1_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                              config: Optional[Any] = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GDPO on the components of the open scope: ``token_level_rewards`` (bs, L) is the summed score (GDPO
    reads the components instead), ``response_mask`` (bs, L) right-padded, ``index`` (bs,) question uids, ``config``
    verl's algorithm config with ``gdpo_reward_keys``. Returns (advantages, returns), both (bs, L)."""
    scope = current_scope()
    keys = list((config.get("gdpo_reward_keys", None) if config is not None else None) or [])
    missing = [key for key in keys if scope is None or key not in scope.fields]
    if not keys or missing:
        raise ValueError(
            f"{NAME} needs algorithm.gdpo_reward_keys (e.g. +algorithm.gdpo_reward_keys=[acc,format]) and the demo's "
            f"runner to fetch those components (bnpo.demo.session); missing: {missing or 'gdpo_reward_keys'}"
        )
    # verl's gdpo puts each component on the response's last token, at attention_mask[:, prompt_length:].sum() - 1
    batch = {"prompts": response_mask.new_zeros((len(response_mask), 0)), "attention_mask": response_mask.long()}
    return compute_gdpo_outcome_advantage(token_level_rewards, response_mask, index, config=config,
                                          non_tensor_batch={key: scope.fields[key] for key in keys}, batch=batch)
