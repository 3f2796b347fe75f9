"""``python -m bnpo.demo``: a small CPU RL run comparing BNPO, GRPO and REINFORCE on one task.

A tiny Qwen2 policy (random init from a local config, short supervised warm start) learns to reverse
digit strings from a binary exact-match reward. Each estimator trains from the same initial weights on
the same question stream; the demo records the pre-clip gradient norm of every update (the paper's
Fig. 2 claim: BNPO's is the most stable), the reward, advantage statistics and BNPO's (a, b, alpha, beta).

verl components used: ``DataProto``, ``compute_advantage`` from ``verl.trainer.ppo.ray_trainer`` with the
estimators of verl's registry (``bnpo`` from this package's plugin, ``grpo``, ``rloo``), the ``vanilla``
PPO policy loss (dual-clip) and ``agg_loss`` from ``core_algos``, ``ActorConfig``, and verl's
``logprobs_from_logits``, ``get_response_mask`` and warm-up LR schedule.

verl's actor does not run here: verl 0.9.1 no longer ships ``verl.workers.actor.dp_actor``
(``DataParallelPPOActor``); its replacement, the engine-based actor, registers its FSDP/Megatron/
VeOmni/AutoModel engines for ``cuda`` and ``npu`` devices only, and the FSDP engine asks for the
accelerator's device id (``torch.cuda.current_device()``), so on a CPU-only machine the lookup fails
("No engine registered for device='cpu'"). The update loop is therefore a plain torch optimizer around
verl's policy loss.
"""

from .experiment import ESTIMATORS, RunResult, Settings, run

__all__ = ["ESTIMATORS", "RunResult", "Settings", "run"]
