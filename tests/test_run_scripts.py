"""The run scripts in DRY_RUN mode: the composed Hydra config (verl's real main_ppo + the recipe)
holds the paper's settings (spec §6), env vars and extra overrides reach it, bad combinations stop
early. Runs on CPU with no GPU, model or data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPTS = {
    "scripts/run_qwen_math_7b.sh": "Qwen/Qwen2.5-Math-7B",
    "scripts/run_qwen_math_1_5b.sh": "Qwen/Qwen2.5-Math-1.5B",
}
# every variable _common.sh reads, cleared so the caller's shell cannot leak into a test
_SCRIPT_VARS = [
    line.split("=", 1)[0].strip()
    for line in (ROOT / "scripts/_common.sh").read_text().split("BNPO_ENV_KEYS=(", 1)[1].split(")", 1)[0].splitlines()
    if "=" in line
] + ["DATA_DIR", "DRY_RUN", "CONFIG_NAME", "RUN_SCRIPT", "BNPO_JOB_ENTRYPOINT", "RAY_ADDRESS"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _SCRIPT_VARS}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HOME"] = "/home/researcher"
    env.update(DRY_RUN="1", **extra)
    return env


def dry_run(script: str, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *overrides], env=_env(**env), cwd="/",
                          capture_output=True, text=True, timeout=300)


def composed(script: str, *overrides: str, **env: str):
    proc = dry_run(script, *overrides, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return OmegaConf.create(yaml.safe_load(proc.stdout))


@pytest.fixture(scope="module", params=sorted(RUN_SCRIPTS))
def paper_config(request):
    return request.param, composed(request.param)


def test_paper_settings(paper_config):
    script, cfg = paper_config
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.actor_rollout_ref.model.path == RUN_SCRIPTS[script]
    assert cfg.algorithm.adv_estimator == "bnpo"
    # optimisation
    assert actor.optim.lr == pytest.approx(1e-6)
    assert actor.optim.lr_warmup_steps == 10
    assert actor.optim.weight_decay == 0.0
    assert actor.optim.clip_grad == 1.0 and actor.grad_clip == 1.0
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert actor.loss_agg_mode == "seq-mean-token-sum"
    assert actor.ppo_mini_batch_size == 32 and actor.ppo_epochs == 1
    assert actor.entropy_coeff == 0
    # no KL anywhere
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    # batch: 32 prompts x 16 rollouts, lengths 1024 / 3072, left truncation
    assert cfg.data.train_batch_size == 32 and rollout.n == 16
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (1024, 3072)
    assert cfg.data.truncation == "left"
    # sampling: rollout T=1, top-p 1; validation T=0.6, top-p 1, one sample
    assert (rollout.temperature, rollout.top_p) == (1.0, 1.0)
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.top_p, rollout.val_kwargs.n) == (0.6, 1.0, 1)
    assert rollout.val_kwargs.do_sample is True
    # engine: vLLM TP 1 at 0.8 memory, dynamic batch 32768 tokens/GPU, checkpointing, rmpad
    assert (rollout.name, rollout.tensor_model_parallel_size, rollout.gpu_memory_utilization) == ("vllm", 1, 0.8)
    assert actor.use_dynamic_bsz is True and actor.ppo_max_token_len_per_gpu == 32768
    assert rollout.log_prob_max_token_len_per_gpu == 32768  # verl's interpolation, resolved
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing is True
    assert cfg.actor_rollout_ref.model.use_remove_padding is True
    # schedule and cluster: 5 epochs, validation every 16 steps, 1 node x 4 GPUs
    assert (cfg.trainer.total_epochs, cfg.trainer.test_freq) == (5, 16)
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (1, 4)
    # data and reward
    assert cfg.data.train_files == "/home/researcher/data/bnpo/math_lighteval/train.parquet"
    assert [Path(p).parent.name for p in cfg.data.val_files] == ["math500", "amc23", "aime24", "aime25"]
    reward_fn = cfg.reward.custom_reward_function
    assert (reward_fn.path, reward_fn.name) == ("pkg://bnpo.rewards", "compute_score")
    assert reward_fn.reward_kwargs.format_reward is False
    assert cfg.algorithm.bnpo.fixed_alpha is None and cfg.algorithm.bnpo.components is None
    # verl's own trainer mode: bnpo needs no trainer flag; the algorithm section builds as bnpo's dataclass
    assert cfg.trainer.v1.trainer_mode == "sync"
    assert cfg.algorithm._target_ == "bnpo.verl_config.BNPOAlgoConfig"


def _check_like_main_ppo(cfg) -> None:
    """verl's start-up validation, called as main_ppo calls it (bnpo's plugin adds its own checks)."""
    import verl  # noqa: F401  (loads the bnpo plugin)
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    assert need_reference_policy(cfg) is False and need_critic(cfg) is False  # no KL, no critic
    validate_config(cfg, use_reference_policy=False, use_critic=False)


def test_verl_accepts_the_composed_config(paper_config):
    _check_like_main_ppo(paper_config[1])


def test_env_vars_and_extra_overrides():
    cfg = composed(
        "scripts/run_qwen_math_7b.sh", "trainer.total_epochs=1", "actor_rollout_ref.actor.optim.lr=2e-6",
        MODEL_PATH="/models/q7", DATA_DIR="/data/x", NNODES="2", N_GPUS_PER_NODE="8", TOTAL_EPOCHS="3",
        FIXED_ALPHA="1", FIXED_BETA="1", ROLLOUT_N="8", LOGGER="[console,wandb]",
    )
    assert cfg.actor_rollout_ref.model.path == "/models/q7"
    assert cfg.data.train_files == "/data/x/math_lighteval/train.parquet"
    assert list(cfg.data.val_files)[0] == "/data/x/math500/test.parquet"
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)
    assert cfg.trainer.total_epochs == 1  # the command line wins over the env var
    assert cfg.actor_rollout_ref.actor.optim.lr == pytest.approx(2e-6)
    assert (cfg.algorithm.bnpo.fixed_alpha, cfg.algorithm.bnpo.fixed_beta) == (1, 1)
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.trainer.experiment_name == "qwen2.5-math-7b-bnpo-a1-b1"


def test_ad_bnpo_turns_on_components_and_format_reward():
    cfg = composed("scripts/run_qwen_math_1_5b.sh", ADV_ESTIMATOR="ad_bnpo")
    assert cfg.algorithm.adv_estimator == "ad_bnpo"
    assert list(cfg.algorithm.bnpo.components) == ["acc", "format"]
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is True
    # R1-template data lives apart from the plain one
    assert cfg.data.train_files == "/home/researcher/data/bnpo_r1/math_lighteval/train.parquet"
    assert cfg.trainer.experiment_name == "qwen2.5-math-1.5b-ad_bnpo"
    _check_like_main_ppo(cfg)


def test_verl_baseline_estimator_passes_through():
    cfg = composed("scripts/run_qwen_math_7b.sh", ADV_ESTIMATOR="grpo", NORM_ADV_BY_STD="false")
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is False


def test_ad_bnpo_without_format_reward_is_refused():
    proc = dry_run("scripts/run_qwen_math_7b.sh", ADV_ESTIMATOR="ad_bnpo", USE_FORMAT_REWARD="0")
    assert proc.returncode == 2
    assert "USE_FORMAT_REWARD" in proc.stderr and proc.stdout == ""


def test_submit_script_dry_run_composes_the_same_run():
    proc = dry_run("scripts/submit_ray_job.sh", "trainer.test_freq=8", RUN_SCRIPT="scripts/run_qwen_math_1_5b.sh",
                   NNODES="2", RAY_ADDRESS="http://10.0.0.1:8265")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(yaml.safe_load(proc.stdout))
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-Math-1.5B"
    assert cfg.trainer.nnodes == 2 and cfg.trainer.test_freq == 8
    # the submit command (stderr): the run script with the overrides, the set variables forwarded
    submit = next(line for line in proc.stderr.splitlines() if line.startswith("ray job submit"))
    assert "--address http://10.0.0.1:8265" in submit
    assert submit.rstrip().endswith("-- bash scripts/run_qwen_math_1_5b.sh trainer.test_freq=8")
    assert '\\"NNODES\\":\\ \\"2\\"' in submit and "VERL_USE_EXTERNAL_MODULES" in submit
