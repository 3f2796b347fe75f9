"""verl ``RolloutReplica`` and ``BaseRollout`` adapter for the CPU rollout (``rollout.name=hf_cpu``).

verl's hybrid engine pairs two objects per rollout replica:

* the *replica* (driver side) launches the generation server actor and hands its handle to verl's
  load balancer, from which the agent loop workers send ``generate`` calls;
* the *adapter* (inside each training worker) receives the trainer's weights after every step
  (``update_weights``) and forwards them to the server.

Both are found by the server's Ray actor name, which depends only on the replica rank.
"""

from __future__ import annotations

import os
from typing import Any, Generator, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica

from .server import CPUGenerationServer


def server_actor_name(replica_rank: int) -> str:
    return f"bnpo_cpu_rollout_server_{replica_rank}"


def _rollout_world_size(config: Any) -> int:
    return config.tensor_model_parallel_size * config.data_parallel_size * config.pipeline_model_parallel_size


def _check_parallelism(config: Any) -> None:
    if _rollout_world_size(config) != 1:
        raise ValueError(
            "the CPU rollout (rollout.name=hf_cpu) runs one process per replica; set "
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline_model_parallel_size=1)."
        )


class CPUReplica(RolloutReplica):
    """One CPU generation server per replica (rollout world size 1)."""

    async def launch_servers(self) -> None:
        _check_parallelism(self.config)
        server_cls = ray.remote(CPUGenerationServer)
        # num_cpus=0: the server only runs while the trainer waits for rollouts, so it need not hold a
        # CPU reservation against the training worker's placement group.
        server = server_cls.options(
            name=server_actor_name(self.replica_rank),
            num_cpus=0,
            max_concurrency=self.max_concurrency,
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self._server_address = await server.get_server_address.remote()
        self._server_handle = server
        self.servers = [server]

    def rollout_worker_use_gpu(self) -> bool:
        return False


class CPUServerAdapter(BaseRollout):
    """Lives in the training worker; pushes the trainer's weights to this replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1, **kwargs: Any):
        super().__init__(config, model_config, device_mesh)
        _check_parallelism(self.config)
        self.replica_rank = int(os.environ.get("RANK", 0)) if replica_rank == -1 else replica_rank
        self.is_leader_rank = True
        self._server: Optional[ray.actor.ActorHandle] = None

    def _server_handle(self) -> ray.actor.ActorHandle:
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"the CPU rollout takes full tensors only (wire_format={wire_format!r}); use "
                "actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise NotImplementedError("the CPU rollout does not load LoRA adapters; set actor_rollout_ref.model.lora.merge=True")
        named = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        await self._server_handle().update_weights.remote(named, global_steps=global_steps)

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None
