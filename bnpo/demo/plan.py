"""Every hyperparameter of the demo, and the verl config they become: ``overrides`` turns ``DemoSettings`` into
Hydra overrides of verl's ``main_ppo`` config, each setting one verl key a GPU run would set the same way.
``VARIANTS``: what differs between the reversal task and the two-reward task (``--task reverse_format``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .reversal import DATA_SOURCE, PolicySize, ReversalTask
from .warm_start import WarmStart


@dataclass(frozen=True)
class Variant:
    """One of the demo's tasks. ``components``: the reward's binary components, reported per component."""

    data_source: str
    reward: str  # a function of bnpo.demo.reward
    components: tuple[str, ...]
    estimators: tuple[str, ...]
    warm_start: WarmStart
    estimator_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)


VARIANTS = {
    "reverse": Variant(DATA_SOURCE, "compute_score", ("acc",), ("bnpo", "grpo", "rloo"), WarmStart()),
    # two rewards: format is mostly learned by the warm start and saturates early; accuracy starts low
    "reverse_format": Variant(
        "bnpo_demo/reverse_format", "compute_score_format", ("acc", "format"),
        ("ad_bnpo", "bnpo", "grpo", "gdpo_v1"), WarmStart(copy_share=0.5, prefix_share=0.3),
        {
            "ad_bnpo": ("+algorithm.bnpo.components=[acc,format]",),
            "bnpo": ("+algorithm.bnpo.reward_max=2",),  # the summed score, acc + format, in [0, 2]
            "gdpo_v1": ("+algorithm.gdpo_reward_keys=[acc,format]",),
        },
    ),
}


@dataclass(frozen=True)
class DemoSettings:
    # experiment: every estimator trains from the same checkpoint with each seed's data order
    variant: str = "reverse"  # a key of VARIANTS
    estimators: tuple[str, ...] = VARIANTS["reverse"].estimators
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 10
    # task: reverse 1..max_digits digits (longer strings are harder)
    task: ReversalTask = ReversalTask(min_digits=1, max_digits=6)
    train_questions: int = 2048
    val_questions: int = 128
    # policy (its supervised warm start, a sloppy teacher, is the variant's: VARIANTS)
    policy: PolicySize = PolicySize()
    # rollouts (the paper: 32 prompts x 16 samples at temperature 1.0)
    prompts_per_step: int = 16  # data.train_batch_size (rollout time is most of a CPU step)
    rollout_n: int = 8
    temperature: float = 1.0
    # PPO update: the paper's clip settings; the learning rate sized for this model
    lr: float = 5e-4
    lr_warmup_steps: int = 0
    ppo_mini_batch_size: int = 8  # prompts per optimizer step: 2 updates per RL step
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 10.0
    loss_agg_mode: str = "token-mean"
    grad_clip: float = 1.0
    # held-out validation before training and every test_freq steps: greedy accuracy by default (deterministic
    # given the weights, so every run's step-0 value is the same); val_temperature > 0 samples val_n answers
    test_freq: int = 5
    val_n: int = 1
    val_temperature: float = 0.0
    # more Hydra overrides for every run (e.g. "+algorithm.bnpo.max_weight=100")
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def runs(self) -> list[dict]:
        """One entry per (estimator, seed), seeds outermost: a partial session still compares estimators."""
        return [{"name": f"{estimator}-seed{seed}", "estimator": estimator, "seed": seed}
                for seed in self.seeds for estimator in self.estimators]


class Paths:
    """Where a demo writes (under ``--out``)."""

    def __init__(self, out: Path):
        work = out / "work"
        self.model, self.train_file, self.val_file = work / "model", work / "train.parquet", work / "val.parquet"
        self.checkpoints, self.plan = work / "checkpoints", work / "plan.json"
        # per run: verl's metrics (<run>.jsonl, its file logger), wall time (<run>.json) and validation dumps
        # (<run>.val/<step>.jsonl, trainer.validation_data_dir: per held-out question its output, ground truth, score)
        self.runs, self.logs = out / "runs", out / "logs"


def overrides(s: DemoSettings, paths: Paths, estimator: str) -> list[str]:
    """verl's Hydra overrides of a run of ``estimator`` (the CPU port's overrides come first, at launch)."""
    task = s.task
    return [
        f"algorithm.adv_estimator={estimator}", "algorithm.use_kl_in_reward=False",
        f"data.train_files={paths.train_file}", f"data.val_files={paths.val_file}",
        f"data.train_batch_size={s.prompts_per_step}", f"data.max_prompt_length={task.max_prompt_tokens}",
        f"data.max_response_length={task.max_response_tokens}", "data.shuffle=True",
        f"actor_rollout_ref.model.path={paths.model}",
        "actor_rollout_ref.actor.use_kl_loss=False", "actor_rollout_ref.actor.entropy_coeff=0",
        f"actor_rollout_ref.actor.optim.lr={s.lr}", f"actor_rollout_ref.actor.grad_clip={s.grad_clip}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps={s.lr_warmup_steps}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.ppo_mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={s.ppo_mini_batch_size * s.rollout_n}",
        f"actor_rollout_ref.actor.clip_ratio_low={s.clip_ratio_low}",
        f"actor_rollout_ref.actor.clip_ratio_high={s.clip_ratio_high}",
        f"actor_rollout_ref.actor.clip_ratio_c={s.clip_ratio_c}",
        f"actor_rollout_ref.actor.loss_agg_mode={s.loss_agg_mode}",
        f"actor_rollout_ref.rollout.n={s.rollout_n}", f"actor_rollout_ref.rollout.temperature={s.temperature}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={s.prompts_per_step * s.rollout_n}",
        f"actor_rollout_ref.rollout.val_kwargs.n={s.val_n}",
        f"actor_rollout_ref.rollout.val_kwargs.do_sample={s.val_temperature > 0}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={s.val_temperature}",
        "reward.custom_reward_function.path=pkg://bnpo.demo.reward",
        f"reward.custom_reward_function.name={s.spec.reward}",
        # verl's v1 sampler polls for finished rollouts every 2 s; bnpo's fast_poll checks every 0.05 s
        "trainer.v1.sampler.custom_sampler.path=pkg://bnpo.demo.fast_poll",
        "trainer.v1.sampler.custom_sampler.name=fast_poll",
        "trainer.logger=[console,file]", "trainer.project_name=bnpo_demo", f"trainer.experiment_name={estimator}",
        f"trainer.default_local_dir={paths.checkpoints}", "trainer.total_epochs=100",
        f"trainer.total_training_steps={s.steps}", "trainer.val_before_train=True", f"trainer.test_freq={s.test_freq}",
        "trainer.save_freq=-1",
        *s.spec.estimator_overrides.get(estimator, ()),
        *s.extra_overrides,
    ]


def val_metric(s: DemoSettings) -> str:
    """verl's name of the held-out accuracy, mean@val_n of ``acc`` (the score itself or a dict's ``acc``)."""
    return f"val-core/{s.spec.data_source}/acc/mean@{s.val_n}"
