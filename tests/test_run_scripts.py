"""The run scripts in DRY_RUN mode: the composed Hydra config (verl's real main_ppo + the recipe)
holds the paper's settings (recipe/bnpo/README.md), env vars and extra overrides reach it, bad combinations stop
early. Runs on CPU with no GPU, model or data."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe_helpers import HOME, ROOT, composed, run_script, script_env

RUN_SCRIPTS = {
    "scripts/run_qwen_math_7b.sh": "Qwen/Qwen2.5-Math-7B",
    "scripts/run_qwen_math_1_5b.sh": "Qwen/Qwen2.5-Math-1.5B",
}


def dry_run(script: str, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return run_script(script, *overrides, **env)


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
    assert cfg.data.train_files == f"{HOME}/data/bnpo/math_lighteval/train.parquet"
    assert [Path(p).parent.name for p in cfg.data.val_files] == ["math500", "amc23", "aime24", "aime25"]
    reward_fn = cfg.reward.custom_reward_function
    assert (reward_fn.path, reward_fn.name) == ("pkg://bnpo.rewards", "compute_score")
    assert reward_fn.reward_kwargs.format_reward is False
    assert cfg.algorithm.bnpo.fixed_alpha is None and "components" not in cfg.algorithm.bnpo
    assert cfg.algorithm.bnpo.reward_max == 1.0
    # the authors' vLLM engine settings (recipe/bnpo/README.md has them all, tests/test_parity.py checks them)
    assert (rollout.max_num_batched_tokens, rollout.max_num_seqs) == (32768, 1024)
    assert cfg.reward.custom_reward_function.reward_kwargs.timeout_s == 10.0
    # verl's own trainer mode: bnpo needs no trainer flag; the algorithm section builds as bnpo's dataclass
    assert cfg.trainer.v1.trainer_mode == "sync"
    assert cfg.algorithm._target_ == "bnpo.verl.algo_config.BNPOAlgoConfig"


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
    assert cfg.data.train_files == f"{HOME}/data/bnpo_r1/math_lighteval/train.parquet"
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


def test_val_n_sets_validation_samples_per_question():
    cfg = composed("scripts/run_qwen_math_7b.sh", VAL_N="8")
    assert cfg.actor_rollout_ref.rollout.val_kwargs.n == 8
    assert cfg.actor_rollout_ref.rollout.val_kwargs.do_sample is True


def test_validation_logs_mean_at_k_and_repeated_files_the_same_mean():
    """What verl 0.9.1 logs (val-core/<source>/acc/...): VAL_N=k samples share their question's id,
    while each row of a repeated file gets its own."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    acc = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    val_n = process_validation_metrics(["math-ai/aime24"] * 8, ["q1"] * 4 + ["q2"] * 4, {"acc": acc})
    assert val_n["math-ai/aime24"]["acc"]["mean@4"] == pytest.approx(0.625)
    repeated = process_validation_metrics(["math-ai/aime24"] * 8, [f"row{i}" for i in range(8)], {"acc": acc})
    assert repeated["math-ai/aime24"]["acc"]["mean@1"] == pytest.approx(0.625)


@pytest.mark.parametrize(
    "overrides, env",
    [((), {"USE_FORMAT_REWARD": "1"}),
     (("reward.custom_reward_function.reward_kwargs.format_reward=true",), {})],
    ids=["variable", "argument"],
)
def test_format_reward_on_plain_bnpo_declares_the_range_0_to_2(overrides, env):
    cfg = composed("scripts/run_qwen_math_7b.sh", *overrides, **env)
    assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is True
    assert (cfg.algorithm.bnpo.reward_min, cfg.algorithm.bnpo.reward_max) == (0.0, 2)
    assert cfg.data.train_files == f"{HOME}/data/bnpo_r1/math_lighteval/train.parquet"
    _check_like_main_ppo(cfg)


def test_ad_bnpo_keeps_the_range_0_to_1_of_each_component():
    cfg = composed("scripts/run_qwen_math_1_5b.sh", ADV_ESTIMATOR="ad_bnpo")
    assert cfg.algorithm.bnpo.reward_max == 1.0


def test_an_explicit_reward_max_wins():
    cfg = composed("scripts/run_qwen_math_7b.sh", "algorithm.bnpo.reward_max=3", USE_FORMAT_REWARD="1")
    assert cfg.algorithm.bnpo.reward_max == 3


def _scores(format_reward: bool) -> tuple[np.ndarray, list[str]]:
    """compute_score on 4 outputs for each of 3 questions: acc + format in {0, 1, 2}."""
    pytest.importorskip("math_verify")
    from bnpo.rewards import compute_score

    outputs = ["<think>a</think><answer>\\boxed{2}</answer>", "\\boxed{2}", "<think>a</think><answer>3</answer>", "x"]
    scores, uids = [], []
    for q in range(3):
        for i, text in enumerate(outputs[q:] + outputs[:q]):
            scores.append(compute_score("test", text, "2", format_reward=format_reward)["score"])
            uids.append(f"q{q}")
    return np.array(scores), uids


def test_bnpo_accepts_the_scores_of_a_format_reward_run():
    """The step-1 advantage with the composed config and real scores: no range error."""
    import verl  # noqa: F401  (registers the estimators)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    scores, uids = _scores(format_reward=True)
    assert scores.max() == 2.0
    rewards = torch.zeros(len(scores), 4)
    rewards[:, -1] = torch.tensor(scores)
    mask = torch.ones_like(rewards)
    estimator = get_adv_estimator_fn("bnpo")
    cfg = composed("scripts/run_qwen_math_7b.sh", USE_FORMAT_REWARD="1")
    adv, _ = estimator(token_level_rewards=rewards, response_mask=mask, index=np.array(uids), config=cfg.algorithm)
    assert torch.isfinite(adv).all()
    # the same scores under the accuracy-only range would stop the run
    with pytest.raises(ValueError, match="reward_max"):
        estimator(token_level_rewards=rewards, response_mask=mask, index=np.array(uids),
                  config=composed("scripts/run_qwen_math_7b.sh").algorithm)


def test_components_with_plain_bnpo_are_refused():
    proc = dry_run("scripts/run_qwen_math_7b.sh", BNPO_COMPONENTS="[acc]")
    assert proc.returncode == 2 and "only apply to ADV_ESTIMATOR=ad_bnpo" in proc.stderr and proc.stdout == ""


# ----------------------------------------------------------------------------------------------
# GPU pre-flight check
# ----------------------------------------------------------------------------------------------


def _fake_nvidia_smi(folder: Path, gpus: int) -> str:
    """A PATH whose nvidia-smi lists ``gpus`` GPUs (and nothing else of the host's)."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(gpus)))
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{script_env()['PATH']}"


def test_run_without_gpus_stops_at_once_and_says_what_to_run(tmp_path):
    start = time.monotonic()
    proc = run_script("scripts/run_qwen_math_7b.sh", dry_run=False, PATH=_fake_nvidia_smi(tmp_path / "bin", 0))
    elapsed = time.monotonic() - start
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: this run needs 1 node(s) x 4 GPU(s)")
    assert "this machine has 0 usable GPU(s)" in proc.stderr
    assert f"DRY_RUN=1 bash {ROOT}/scripts/run_qwen_math_7b.sh" in proc.stderr
    assert "bash scripts/run_cpu_smoke.sh" in proc.stderr
    assert "verl.trainer.main_ppo" not in proc.stderr  # stopped before verl was started
    assert elapsed < 30, elapsed


def _preflight(tmp_path, gpus: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    snippet = f'source "{ROOT}/scripts/_common.sh"; bnpo_gpu_preflight "$@"'
    return subprocess.run(["bash", "-c", snippet, "run_qwen_math_7b.sh", *args], capture_output=True, text=True,
                          timeout=120, env=script_env(dry_run=False, PATH=_fake_nvidia_smi(tmp_path / "bin", gpus),
                                                      **env))


def test_preflight_counts_the_gpus_asked_for(tmp_path):
    assert _preflight(tmp_path, 4).returncode == 0
    assert _preflight(tmp_path, 8, "trainer.n_gpus_per_node=8").returncode == 0
    too_few = _preflight(tmp_path, 4, N_GPUS_PER_NODE="8")
    assert too_few.returncode == 2 and "needs 1 node(s) x 8 GPU(s)" in too_few.stderr
    assert "this machine has 4 usable GPU(s) (nvidia-smi lists 4)" in too_few.stderr
    hidden = _preflight(tmp_path, 4, CUDA_VISIBLE_DEVICES="0,1")
    assert hidden.returncode == 2 and "has 2 usable GPU(s)" in hidden.stderr
    assert _preflight(tmp_path, 4, "trainer.n_gpus_per_node=2", CUDA_VISIBLE_DEVICES="0,1").returncode == 0
    two_nodes = _preflight(tmp_path, 8, NNODES="2")
    assert two_nodes.returncode == 2 and "2 nodes need a Ray cluster" in two_nodes.stderr
    assert _preflight(tmp_path, 0, BNPO_SKIP_GPU_CHECK="1").returncode == 0
