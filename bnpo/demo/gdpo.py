"""GDPO in verl's v1 trainer, for the demo's two-reward task: verl's own ``gdpo``, fed the reward components.

verl 0.9.1 ships ``gdpo`` (``compute_gdpo_outcome_advantage``), but only the legacy trainer's ``compute_advantage``
hands it the reward components: the v1 trainer's ``_compute_advantage`` builds its batch from TransferQueue with
``uid``, ``response_mask`` and the scores only, so ``algorithm.adv_estimator=gdpo`` fails there on its first step
(``KeyError: 'prompts'``; docs/demo.md). ``gdpo_v1`` calls the same verl function with the components the demo's
runner fetched through bnpo's component route (``bnpo.verl.trainer_v1.reward_fields``, the reward function's dict
as verl's agent loop stored it), handed over in a ``bnpo.verl.estimator_scope`` (``bnpo.demo.session``). Nothing
of GDPO is re-implemented here: per component verl's GRPO normalisation, the weighted sum, verl's batch whitening.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage, register_adv_est

from bnpo.verl.context import current_scope

NAME = "gdpo_v1"


@register_adv_est(NAME)
def compute_gdpo_v1_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Optional[Any] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GDPO on the components of the open scope.

    Args:
        token_level_rewards: (bs, L), the summed score (GDPO reads the components instead).
        response_mask: (bs, L), right-padded: each response's tokens first.
        index: (bs,) question uids.
        config: verl's algorithm config with ``gdpo_reward_keys`` (and optionally ``gdpo_reward_weights``).

    Returns:
        advantages, returns: (bs, L), equal.
    """
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
    return compute_gdpo_outcome_advantage(
        token_level_rewards, response_mask, index, config=config,
        non_tensor_batch={key: scope.fields[key] for key in keys}, batch=batch,
    )
