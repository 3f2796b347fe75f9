"""A sign-flipped BNPO, registered with verl through its external-module mechanism (a control for the demo's test).

``VERL_USE_EXTERNAL_MODULES=flipped_estimator`` (with ``tests/`` on PYTHONPATH) makes every verl process import
this module, which registers ``bnpo_flipped``: BNPO's advantages times -1, so training pushes the policy away
from what the reward favours. A demo that still "learns" with it is not measuring learning.
"""

from verl.trainer.ppo.core_algos import register_adv_est

from bnpo.verl.estimators import compute_bnpo_outcome_advantage

NAME = "bnpo_flipped"


@register_adv_est(NAME)
def compute_flipped_bnpo_advantage(token_level_rewards, response_mask, index=None, config=None, **kwargs):
    """-1 x BNPO's (bs, L) advantages and returns (verl's estimator signature)."""
    advantages, returns = compute_bnpo_outcome_advantage(token_level_rewards, response_mask, index, config, **kwargs)
    return -advantages, -returns
