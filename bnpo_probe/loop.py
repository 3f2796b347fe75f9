"""The probe's torch loop: warm-start a tiny policy, train it with RL, score batches at fixed policies.

The probe needs per-batch gradients at fixed policies, which verl's trainer does not expose, so it keeps this loop
around verl's pieces: rollouts into a ``DataProto`` (a ``uid`` per question), the outcome reward on the last response
token, ``old_log_probs`` without gradients, verl's ``compute_advantage``, then PPO mini-batch updates with verl's
``vanilla`` policy loss and a plain torch optimizer. Per seed, every estimator sees the same weights and streams.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from queue import Empty
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.torch_functional import get_constant_schedule_with_warmup, masked_mean
from verl.workers.config import ActorConfig

from bnpo.core import BNPOStats
from bnpo.verl import estimator_scope

from .task import ReverseTask, build_policy, response_log_probs, sample_responses


@dataclass(frozen=True)
class Settings:
    """Every hyperparameter of one training run (what the probe measures: ``ProbeSettings``)."""

    steps: int = 200  # RL steps (the probe runs to its last snapshot)
    # task: reverse 1..max_digits digits; longer strings are harder
    min_digits: int = 1
    max_digits: int = 6
    # policy: Qwen2 decoder from a local config, random init (~75K parameters)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    # supervised warm start, stopped early so that success rates spread across (0, 1)
    warm_start_steps: int = 200
    warm_start_batch_size: int = 64
    warm_start_lr: float = 3e-3
    # rollouts (the paper: 32 prompts x 16 samples at temperature 1.0)
    prompts_per_step: int = 32
    rollout_n: int = 8
    temperature: float = 1.0
    # PPO update: the paper's recipe (arXiv 2506.02864, Sec. 5) except the learning rate, sized for this model
    lr: float = 5e-4
    lr_warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ppo_mini_batch_size: int = 16  # prompts per optimizer step: 2 updates per RL step, so clipping is live
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 10.0  # dual-clip bound for negative advantages
    loss_agg_mode: str = "seq-mean-token-sum"

    @property
    def task(self) -> ReverseTask:
        return ReverseTask(self.min_digits, self.max_digits)

    def policy(self, seed: int) -> torch.nn.Module:
        """A randomly initialised policy of this size, seeded."""
        return build_policy(self.hidden_size, self.num_layers, self.num_heads, seed)


@dataclass(frozen=True)
class EstimatorSpec:
    """How one named estimator is configured in verl: ``algorithm.adv_estimator`` and friends."""

    adv_estimator: str
    norm_adv_by_std_in_grpo: bool = True
    bnpo: Optional[dict] = None


ESTIMATORS: dict[str, EstimatorSpec] = {
    "bnpo": EstimatorSpec("bnpo", bnpo={}),  # adaptive (alpha, beta) = (1 + a/3, 1 + b/3)
    "grpo": EstimatorSpec("grpo"),  # (R - mean) / std per question
    "reinforce": EstimatorSpec("bnpo", bnpo={"fixed_alpha": 1.0, "fixed_beta": 1.0}),  # group-mean baseline
    "grpo_no_std": EstimatorSpec("grpo", norm_adv_by_std_in_grpo=False),  # REINFORCE again, as verl's GRPO
    "rloo": EstimatorSpec("rloo"),  # verl's leave-one-out baseline
    # the empirical-Bayes leave-one-out baseline, alone (weight 1) and with BNPO's weight
    "eb_loo": EstimatorSpec("bnpo", bnpo={"fixed_alpha": 1.0, "fixed_beta": 1.0, "baseline": "eb_loo"}),
    "bnpo_eb_loo": EstimatorSpec("bnpo", bnpo={"baseline": "eb_loo"}),
}


def actor_config(s: Settings) -> ActorConfig:
    """verl's actor config, carrying the recipe's clip and aggregation settings to the policy loss."""
    return ActorConfig(strategy="fsdp", rollout_n=s.rollout_n, ppo_mini_batch_size=s.ppo_mini_batch_size,
                       ppo_micro_batch_size_per_gpu=s.ppo_mini_batch_size, clip_ratio_low=s.clip_ratio_low,
                       clip_ratio_high=s.clip_ratio_high, clip_ratio_c=s.clip_ratio_c, loss_agg_mode=s.loss_agg_mode,
                       entropy_coeff=0.0, use_kl_loss=False, use_torch_compile=False)


def warm_start(s: Settings, seed: int) -> dict[str, torch.Tensor]:
    """Supervised next-token training on reference answers; returns the initial weights of every run."""
    model = s.policy(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.warm_start_lr)
    generator = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(s.warm_start_steps):
        prompts = s.task.sample_prompts(s.warm_start_batch_size, generator)
        target, counted = s.task.targets(prompts)
        loss = -masked_mean(response_log_probs(model, prompts, target), counted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return copy.deepcopy(model.state_dict())


@torch.no_grad()
def rollout(s: Settings, model: torch.nn.Module, questions: torch.Tensor, sampler: torch.Generator) -> DataProto:
    """Sample ``rollout_n`` responses per question and score them, as verl's trainer lays out a batch."""
    uids = np.array([f"q{i}" for i in range(len(questions))], dtype=object)  # verl's per-question group key
    batch = DataProto.from_dict(tensors={"prompts": questions}, non_tensors={"uid": uids})
    batch = batch.repeat(repeat_times=s.rollout_n, interleave=True)
    prompts = batch.batch["prompts"]
    responses, response_mask = sample_responses(model, prompts, s.task.response_length, s.temperature, sampler)
    # outcome reward on the last valid token: verl's reward-manager convention
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    rewards[torch.arange(len(prompts)), response_mask.sum(dim=1) - 1] = s.task.reward(prompts, responses)
    batch.batch.update({"responses": responses, "response_mask": response_mask, "token_level_rewards": rewards,
                        "old_log_probs": response_log_probs(model, prompts, responses, s.temperature)})
    return batch


def estimate_advantages(spec: EstimatorSpec, batch: DataProto) -> tuple[DataProto, Optional[BNPOStats]]:
    """verl's ``compute_advantage`` with this estimator (its ``algorithm`` block as a Hydra user would write it) on
    a shallow copy of ``batch``, and BNPO's statistics (None for other estimators)."""
    config = {"adv_estimator": spec.adv_estimator, "norm_adv_by_std_in_grpo": spec.norm_adv_by_std_in_grpo,
              **({} if spec.bnpo is None else {"bnpo": dict(spec.bnpo)})}
    with estimator_scope() as scope:  # the scope collects BNPO's statistics
        # select with the keys named makes a new TensorDict (sharing the tensors): the advantages land on the copy
        scored = compute_advantage(batch.select(batch_keys=list(batch.batch.keys())), spec.adv_estimator,
                                   norm_adv_by_std_in_grpo=spec.norm_adv_by_std_in_grpo,
                                   config=OmegaConf.create(config))
    return scored, scope.stats


def policy_loss(s: Settings, log_prob: torch.Tensor, batch: DataProto, actor_cfg: ActorConfig) -> torch.Tensor:
    """verl's policy loss (``vanilla``: dual-clip PPO with ``agg_loss``) of the batch's advantages at ``log_prob``."""
    loss, _ = get_policy_loss_fn(actor_cfg.policy_loss.loss_mode)(
        old_log_prob=batch.batch["old_log_probs"], log_prob=log_prob, advantages=batch.batch["advantages"],
        response_mask=batch.batch["response_mask"].bool(), loss_agg_mode=s.loss_agg_mode, config=actor_cfg)
    return loss


def train(s: Settings, name: str, seed: int, initial_state: dict, keep_states: Sequence[int],
          on_step: Callable[[int], None] = lambda step: None) -> dict[int, dict[str, torch.Tensor]]:
    """One RL run of estimator ``name`` from the seed's warm-started weights, ``s.steps`` steps: the weights after
    each step in ``keep_states`` (0: the initial weights). ``on_step`` sees each finished step."""
    spec, actor_cfg = ESTIMATORS[name], actor_config(s)
    model = s.policy(seed)
    model.load_state_dict(initial_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=s.lr_warmup_steps)
    questions = torch.Generator().manual_seed(40_000 + seed)  # same data order for every estimator
    sampler = torch.Generator().manual_seed(50_000 + seed)
    states = {0: copy.deepcopy(model.state_dict())} if 0 in keep_states else {}
    for step in range(1, s.steps + 1):
        batch = rollout(s, model, s.task.sample_prompts(s.prompts_per_step, questions), sampler)
        batch, _ = estimate_advantages(spec, batch)
        for mini in batch.split(s.ppo_mini_batch_size * s.rollout_n):  # one PPO epoch in mini-batches
            log_prob = response_log_probs(model, mini.batch["prompts"], mini.batch["responses"], s.temperature)
            optimizer.zero_grad()
            policy_loss(s, log_prob, mini, actor_cfg).backward()
            # as verl's actor: skip a step whose gradient is not finite
            if math.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip).item()):
                optimizer.step()
        scheduler.step()
        if step in keep_states:
            states[step] = copy.deepcopy(model.state_dict())
        on_step(step)
    return states


_PROGRESS: Optional[Any] = None  # where finished units of work go: a worker's queue, or the bar's callback
_DONE = "done"  # what a worker sends after each job, behind everything the job reported


def _init_worker(queue: Optional[Any], num_threads: int) -> None:
    global _PROGRESS
    _PROGRESS = queue
    torch.set_num_threads(num_threads)


def report_progress(message: Any) -> None:
    """Send one finished unit of work to the progress bar of ``run_jobs`` (nothing outside it)."""
    if _PROGRESS is not None:
        _PROGRESS.put(message)


def _job(fn: Callable, args: tuple) -> Any:
    """One job in a worker process; _DONE follows, in queue order, everything the job reported."""
    try:
        return fn(*args)
    finally:
        report_progress(_DONE)


def run_jobs(jobs: list[tuple[Callable, tuple]], workers: int, num_threads: int,
             advance: Callable[[Any], None]) -> list:
    """``[fn(*args) for fn, args in jobs]`` in up to ``workers`` processes; what jobs report goes to ``advance``.

    One process per job (one intra-op thread each by default): on 2 cores this beats 2 threads in one process,
    whose thread pool stalls badly whenever another program is using the CPU.
    """
    if workers <= 1 or len(jobs) <= 1:
        threads = torch.get_num_threads()
        _init_worker(SimpleNamespace(put=advance), num_threads)
        try:
            return [fn(*args) for fn, args in jobs]
        finally:
            _init_worker(None, threads)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = context.Queue()
    with ProcessPoolExecutor(min(workers, len(jobs)), context, initializer=_init_worker,
                             initargs=(queue, num_threads)) as pool:
        futures = [pool.submit(_job, fn, args) for fn, args in jobs]
        finished = 0
        while finished < len(futures):
            try:
                message = queue.get(timeout=0.1)
            except Empty:
                if all(f.done() for f in futures):  # a worker died without reporting: result() raises why
                    break
                continue
            if message == _DONE:
                finished += 1
            else:
                advance(message)
        return [f.result() for f in futures]
