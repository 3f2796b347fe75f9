"""The control run of tests/test_cpu_smoke.py: the trainer's weights stop reaching vLLM after the first sync.

Imported in verl's training worker through ``actor_rollout_ref.model.external_lib=no_weight_sync`` (with
``tests/`` on ``PYTHONPATH``), in place of the smoke run's own ``bnpo_cpu_e2e.process_group``, which it
imports. It lets verl's first weight sync through (vLLM starts on dummy weights and needs the initial
ones) and drops every later one, so from step 2 on vLLM samples from the weights before the step-1
update. The smoke test's rollout-vs-actor probability check must fail on such a run.
"""

from __future__ import annotations

import bnpo_cpu_e2e.process_group  # noqa: F401  (the gloo process group the smoke run needs)
from verl.workers.rollout.vllm_rollout.vllm_rollout import ServerAdapter

_send = ServerAdapter.update_weights
_syncs = {"count": 0}


async def _first_sync_only(self, weights, *args, **kwargs):
    _syncs["count"] += 1
    if _syncs["count"] == 1:
        return await _send(self, weights, *args, **kwargs)
    for _ in weights:  # the actor still gathers its parameters, as in a real sync
        pass
    return None


ServerAdapter.update_weights = _first_sync_only
