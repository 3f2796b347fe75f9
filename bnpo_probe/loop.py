"""The gradient-noise probe's torch loop: warm-start a tiny policy, train it with RL, score batches at fixed policies.

The probe needs per-batch policy gradients at fixed policies, which verl's trainer does not expose, so it keeps
this loop around verl's pieces (the verl demo, ``python -m bnpo.demo``, runs verl's trainer itself). Per seed the
initial weights, question stream and sampler state are the same for every estimator. Each RL step follows verl's
data flow: rollouts into a ``DataProto`` (a ``uid`` per question), the outcome reward on the last response token,
``old_log_probs`` without gradients, verl's ``compute_advantage`` with the registry's estimator, then PPO
mini-batch updates with verl's ``vanilla`` policy loss and a plain torch optimizer.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from queue import Empty
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm
from verl import DataProto
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.torch_functional import get_constant_schedule_with_warmup, masked_mean
from verl.workers.config import ActorConfig

from bnpo.core import BNPOStats, FitState
from bnpo.verl import estimator_scope

from .task import ReverseTask, build_policy, response_log_probs, sample_responses


@dataclass(frozen=True)
class Settings:
    """Every hyperparameter of one training run (estimator, seed, processes, measures: ``ProbeSettings``)."""

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
    # evaluation: mean reward of eval_samples samples on a fixed held-out question set
    eval_questions: int = 256
    eval_samples: int = 4
    eval_every: int = 0  # also evaluate every this many RL steps (0: at the start and the end only)

    @property
    def task(self) -> ReverseTask:
        return ReverseTask(self.min_digits, self.max_digits)

    def policy(self, seed: int) -> torch.nn.Module:
        """A randomly initialised policy of this size and task (vocabulary), seeded."""
        return build_policy(self.hidden_size, self.num_layers, self.num_heads, seed, self.task.vocab_size)


@dataclass(frozen=True)
class EstimatorSpec:
    """How one named estimator is configured in verl: ``algorithm.adv_estimator`` and friends."""

    adv_estimator: str
    norm_adv_by_std_in_grpo: bool = True
    bnpo: Optional[dict] = None
    description: str = ""


ESTIMATORS: dict[str, EstimatorSpec] = {
    "bnpo": EstimatorSpec("bnpo", bnpo={}, description="BNPO, adaptive (alpha, beta) = (1 + a/3, 1 + b/3)"),
    "grpo": EstimatorSpec("grpo", description="verl's GRPO: (R - mean) / std per question"),
    "reinforce": EstimatorSpec("bnpo", bnpo={"fixed_alpha": 1.0, "fixed_beta": 1.0},
                               description="REINFORCE with baseline: BNPO at (1, 1)"),
    "grpo_no_std": EstimatorSpec("grpo", norm_adv_by_std_in_grpo=False,
                                 description="verl's GRPO without std: REINFORCE with baseline"),
    "rloo": EstimatorSpec("rloo", description="verl's RLOO: leave-one-out baseline"),
    # the opt-in options of algorithm.bnpo: a steadier Beta fit, an empirical-Bayes baseline
    "bnpo_pooled": EstimatorSpec("bnpo", bnpo={"fit_halflife": 10.0},
                                 description="BNPO, the Beta fit's moments pooled over steps (half-life 10)"),
    "bnpo_posterior": EstimatorSpec(
        "bnpo", bnpo={"baseline": "posterior_mean"},
        description="BNPO, baseline: posterior mean of p(q) under the deconvolved Beta prior"),
    # the empirical-Bayes leave-one-out baseline, alone (weight 1) and with BNPO's weight
    "eb_loo": EstimatorSpec("bnpo", bnpo={"fixed_alpha": 1.0, "fixed_beta": 1.0, "baseline": "eb_loo"},
                            description="REINFORCE with the eb_loo baseline: BNPO at (1, 1), baseline: eb_loo"),
    "bnpo_eb_loo": EstimatorSpec("bnpo", bnpo={"baseline": "eb_loo"},
                                 description="BNPO, adaptive (alpha, beta), baseline: eb_loo"),
}


@dataclass
class RunResult:
    """One (estimator, seed) run: per-step metric rows and the held-out reward before and after."""

    estimator: str
    seed: int
    initial_reward: float
    final_reward: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # held-out {step, reward, <component>...}
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # weights after the kept steps


def algorithm_config(spec: EstimatorSpec) -> Any:
    """verl's ``algorithm`` config block for this estimator (what a Hydra user would write)."""
    block = {"adv_estimator": spec.adv_estimator, "norm_adv_by_std_in_grpo": spec.norm_adv_by_std_in_grpo}
    if spec.bnpo is not None:
        block["bnpo"] = dict(spec.bnpo)
    return OmegaConf.create(block)


def actor_config(s: Settings) -> ActorConfig:
    """verl's actor config, carrying the recipe's clip and aggregation settings to the policy loss."""
    return ActorConfig(strategy="fsdp", rollout_n=s.rollout_n, ppo_mini_batch_size=s.ppo_mini_batch_size,
                       ppo_micro_batch_size_per_gpu=s.ppo_mini_batch_size, clip_ratio_low=s.clip_ratio_low,
                       clip_ratio_high=s.clip_ratio_high, clip_ratio_c=s.clip_ratio_c, loss_agg_mode=s.loss_agg_mode,
                       entropy_coeff=0.0, use_kl_loss=False, use_torch_compile=False)


def warm_start(s: Settings, seed: int) -> dict[str, torch.Tensor]:
    """Supervised next-token training on reference answers; returns the initial weights of every run."""
    task = s.task
    model = s.policy(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.warm_start_lr)
    generator = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(s.warm_start_steps):
        prompts = task.sample_prompts(s.warm_start_batch_size, generator)
        target, counted = task.supervised_targets(prompts, generator)
        loss = -masked_mean(response_log_probs(model, prompts, target), counted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return copy.deepcopy(model.state_dict())


@torch.no_grad()
def evaluate(s: Settings, model: torch.nn.Module, seed: int) -> dict[str, float]:
    """Mean reward (and of each reward component) on a fixed held-out set; the same questions and sampler
    state for every estimator and every evaluation of a seed."""
    task = s.task
    prompts = task.sample_prompts(s.eval_questions, torch.Generator().manual_seed(20_000 + seed))
    prompts = prompts.repeat_interleave(s.eval_samples, dim=0)
    sampler = torch.Generator().manual_seed(30_000 + seed)
    responses, _ = sample_responses(model, prompts, task.response_length, s.temperature, sampler)
    scores = {"reward": task.reward(prompts, responses), **task.reward_components(prompts, responses)}
    return {key: value.mean().item() for key, value in scores.items()}


@torch.no_grad()
def rollout(s: Settings, model: torch.nn.Module, questions: torch.Tensor, sampler: torch.Generator) -> DataProto:
    """Sample ``rollout_n`` responses per question and score them, as verl's trainer lays out a batch."""
    task = s.task
    uids = np.array([f"q{i}" for i in range(len(questions))], dtype=object)  # verl's per-question group key
    batch = DataProto.from_dict(tensors={"prompts": questions}, non_tensors={"uid": uids})
    batch = batch.repeat(repeat_times=s.rollout_n, interleave=True)
    prompts = batch.batch["prompts"]
    responses, response_mask = sample_responses(model, prompts, task.response_length, s.temperature, sampler)
    # outcome reward on the last valid token: verl's reward-manager convention
    last_token = response_mask.sum(dim=1) - 1
    token_level_rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    token_level_rewards[torch.arange(len(prompts)), last_token] = task.reward(prompts, responses)
    for key, value in task.reward_components(prompts, responses).items():  # what a reward function's dict holds
        batch.non_tensor_batch[key] = value.numpy()
    batch.batch["responses"] = responses
    batch.batch["response_mask"] = response_mask
    batch.batch["token_level_rewards"] = token_level_rewards
    batch.batch["old_log_probs"] = response_log_probs(model, prompts, responses, s.temperature)
    return batch


def estimate_advantages(spec: EstimatorSpec, batch: DataProto,
                        fit_state: Optional[FitState] = None) -> tuple[DataProto, Optional[BNPOStats]]:
    """verl's ``compute_advantage`` with this estimator on a shallow copy of ``batch``, and BNPO's statistics
    (None for other estimators). ``fit_state``: the run's pooled fits (``fit_halflife``)."""
    components = {key: batch.non_tensor_batch[key] for key in (spec.bnpo or {}).get("components", ())}
    with estimator_scope(fit_state, fields=components) as scope:  # ad_bnpo reads its components from the scope
        # select with the keys named makes a new TensorDict (sharing the tensors): the advantages land on the copy
        scored = compute_advantage(batch.select(batch_keys=list(batch.batch.keys())), spec.adv_estimator,
                                   norm_adv_by_std_in_grpo=spec.norm_adv_by_std_in_grpo, config=algorithm_config(spec))
    return scored, scope.stats


def policy_loss(s: Settings, log_prob: torch.Tensor, batch: DataProto,
                actor_cfg: ActorConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's policy loss (``vanilla``: dual-clip PPO with ``agg_loss``) of the batch's advantages at ``log_prob``."""
    return get_policy_loss_fn(actor_cfg.policy_loss.loss_mode)(
        old_log_prob=batch.batch["old_log_probs"], log_prob=log_prob, advantages=batch.batch["advantages"],
        response_mask=batch.batch["response_mask"].bool(), loss_agg_mode=s.loss_agg_mode, config=actor_cfg)


def ppo_update(s: Settings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: DataProto,
               actor_cfg: ActorConfig) -> dict[str, float]:
    """One PPO epoch over the batch in mini-batches; returns the mean of each mini-batch metric."""
    collected: dict[str, list[float]] = {}
    for mini in batch.split(s.ppo_mini_batch_size * s.rollout_n):
        log_prob = response_log_probs(model, mini.batch["prompts"], mini.batch["responses"], s.temperature)
        loss, pg_metrics = policy_loss(s, log_prob, mini, actor_cfg)
        optimizer.zero_grad()
        loss.backward()
        # the norm before clipping is what the paper's Fig. 2 plots
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip).item()
        if math.isfinite(grad_norm):  # as verl's actor: skip a step whose gradient is not finite
            optimizer.step()
        metrics = {"grad_norm": grad_norm, "pg_loss": loss.item()}
        metrics.update({key.removeprefix("actor/"): value for key, value in pg_metrics.items()})
        for key, value in metrics.items():
            collected.setdefault(key, []).append(float(value))
    return {key: float(np.mean(values)) for key, values in collected.items()}


def batch_metrics(s: Settings, batch: DataProto) -> dict[str, float]:
    """Reward and advantage statistics of one rollout batch (one scalar advantage per sequence)."""
    reward = batch.batch["token_level_rewards"].sum(dim=1)
    p_hat = reward.view(-1, s.rollout_n).mean(dim=1)
    advantage = batch.batch["advantages"][:, 0]  # outcome estimators broadcast one value over the response
    parts = {key: float(np.mean(batch.non_tensor_batch[key])) for key in s.task.components}
    return {"reward": reward.mean().item(), **parts, "mixed_frac": ((p_hat > 0) & (p_hat < 1)).float().mean().item(),
            "adv_mean": advantage.mean().item(), "adv_std": advantage.std().item(),
            "adv_abs_max": advantage.abs().max().item(),
            "response_length": batch.batch["response_mask"].sum(dim=1).float().mean().item()}


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


def _send_progress(row: dict) -> None:
    report_progress({key: row[key] for key in ("estimator", "seed", "reward", "grad_norm")})


def train(s: Settings, name: str, seed: int, initial_state: dict, on_step: Callable[[dict], None] = _send_progress,
          keep_states: Sequence[int] = ()) -> RunResult:
    """One RL run of estimator ``name`` from the seed's warm-started weights; ``on_step`` sees each metric row.

    ``keep_states``: the steps after which the weights are kept in ``RunResult.states`` (0: the initial weights).
    """
    spec = ESTIMATORS[name]
    fit_state = FitState()  # fit_halflife: this run's pooled fit
    actor_cfg = actor_config(s)
    model = s.policy(seed)
    model.load_state_dict(initial_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=s.lr_warmup_steps)
    questions = torch.Generator().manual_seed(40_000 + seed)  # same data order for every estimator
    sampler = torch.Generator().manual_seed(50_000 + seed)
    initial = evaluate(s, model, seed)
    result = RunResult(name, seed, initial_reward=initial["reward"], final_reward=math.nan)
    result.evals.append({"step": 0, **initial})
    if 0 in keep_states:
        result.states[0] = copy.deepcopy(model.state_dict())
    for step in range(1, s.steps + 1):
        batch = rollout(s, model, s.task.sample_prompts(s.prompts_per_step, questions), sampler)
        batch, stats = estimate_advantages(spec, batch, fit_state)
        row = {"estimator": name, "seed": seed, "step": step, "lr": scheduler.get_last_lr()[0]}
        row.update(batch_metrics(s, batch))
        row.update(ppo_update(s, model, optimizer, batch, actor_cfg))
        scheduler.step()
        for key in ("mu", "var", "a", "b", "alpha", "beta"):  # ad_bnpo has one fit per component: none here
            value = getattr(stats, key) if stats is not None else None
            row[f"bnpo_{key}"] = math.nan if value is None else value
        result.rows.append(row)
        if step in keep_states:
            result.states[step] = copy.deepcopy(model.state_dict())
        if s.eval_every and step % s.eval_every == 0 and step < s.steps:
            result.evals.append({"step": step, **evaluate(s, model, seed)})
        on_step(row)
    final = evaluate(s, model, seed)
    result.evals.append({"step": s.steps, **final})
    result.final_reward = final["reward"]
    return result


def run_jobs(jobs: list[tuple[Callable, tuple]], workers: int, num_threads: int, advance: Callable[[Any], None]) -> list:
    """``[fn(*args) for fn, args in jobs]`` in up to ``workers`` processes; what jobs report goes to ``advance``.

    One process per job (a single intra-op thread each by default): on 2 cores this beats 2 threads in one
    process, whose thread pool stalls badly whenever another program is using the CPU.
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
    initargs = (queue, num_threads)
    with ProcessPoolExecutor(min(workers, len(jobs)), context, initializer=_init_worker, initargs=initargs) as pool:
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


def _job(fn: Callable, args: tuple) -> Any:
    """One job in a worker process; _DONE follows, in queue order, everything the job reported."""
    try:
        return fn(*args)
    finally:
        report_progress(_DONE)
