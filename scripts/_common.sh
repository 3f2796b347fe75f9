# shellcheck shell=bash
# Shared by scripts/run_qwen_math_*.sh and scripts/submit_ray_job.sh (sourced, not run).
#
# The paper's settings live in recipe/bnpo/config/bnpo_trainer.yaml. This file only turns the
# environment variables below into Hydra overrides, for the ones that are set, so a variable that
# is unset keeps the recipe's value.

BNPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BNPO_CONFIG_DIR="$BNPO_ROOT/recipe/bnpo/config"
BNPO_CONFIG_NAME="${CONFIG_NAME:-bnpo_trainer}"
PYTHON="${PYTHON:-python3}"

# ENV_VAR=hydra.key — the settings a run can change without touching Hydra syntax.
BNPO_ENV_KEYS=(
  MODEL_PATH=actor_rollout_ref.model.path
  TRAIN_FILES=data.train_files
  VAL_FILES=data.val_files
  NNODES=trainer.nnodes
  N_GPUS_PER_NODE=trainer.n_gpus_per_node
  ADV_ESTIMATOR=algorithm.adv_estimator
  NORM_ADV_BY_STD=algorithm.norm_adv_by_std_in_grpo
  FIXED_ALPHA=algorithm.bnpo.fixed_alpha
  FIXED_BETA=algorithm.bnpo.fixed_beta
  BNPO_COMPONENTS=algorithm.bnpo.components
  BNPO_COMPONENT_WEIGHTS=algorithm.bnpo.component_weights
  USE_FORMAT_REWARD=reward.custom_reward_function.reward_kwargs.format_reward
  TRAIN_BATCH_SIZE=data.train_batch_size
  ROLLOUT_N=actor_rollout_ref.rollout.n
  PPO_MINI_BATCH_SIZE=actor_rollout_ref.actor.ppo_mini_batch_size
  LR=actor_rollout_ref.actor.optim.lr
  LR_WARMUP_STEPS=actor_rollout_ref.actor.optim.lr_warmup_steps
  MAX_PROMPT_LENGTH=data.max_prompt_length
  MAX_RESPONSE_LENGTH=data.max_response_length
  MAX_TOKEN_LEN_PER_GPU=actor_rollout_ref.actor.ppo_max_token_len_per_gpu
  CLIP_RATIO_LOW=actor_rollout_ref.actor.clip_ratio_low
  CLIP_RATIO_HIGH=actor_rollout_ref.actor.clip_ratio_high
  CLIP_RATIO_C=actor_rollout_ref.actor.clip_ratio_c
  LOSS_AGG_MODE=actor_rollout_ref.actor.loss_agg_mode
  TEMPERATURE=actor_rollout_ref.rollout.temperature
  VAL_TEMPERATURE=actor_rollout_ref.rollout.val_kwargs.temperature
  TP_SIZE=actor_rollout_ref.rollout.tensor_model_parallel_size
  GPU_MEMORY_UTILIZATION=actor_rollout_ref.rollout.gpu_memory_utilization
  TOTAL_EPOCHS=trainer.total_epochs
  TOTAL_TRAINING_STEPS=trainer.total_training_steps
  TEST_FREQ=trainer.test_freq
  SAVE_FREQ=trainer.save_freq
  CKPT_DIR=trainer.default_local_dir
  PROJECT_NAME=trainer.project_name
  EXPERIMENT_NAME=trainer.experiment_name
  LOGGER=trainer.logger
)

bnpo_die() {
  echo "error: $*" >&2
  exit 2
}

# bnpo_defaults MODEL_PATH_DEFAULT EXPERIMENT_PREFIX: fill in what depends on the run script, the
# estimator and the data folder. Exports so that submit_ray_job.sh can forward the same values.
bnpo_defaults() {
  local model_default="$1" prefix="$2"
  export MODEL_PATH="${MODEL_PATH:-$model_default}"
  export ADV_ESTIMATOR="${ADV_ESTIMATOR:-bnpo}"
  case "$ADV_ESTIMATOR" in
    ad_bnpo)
      # AD-BNPO decomposes accuracy and format; both keys come from bnpo.rewards.compute_score
      export USE_FORMAT_REWARD="${USE_FORMAT_REWARD:-true}"
      export BNPO_COMPONENTS="${BNPO_COMPONENTS:-[acc,format]}"
      if [[ "$BNPO_COMPONENTS" == *format* ]] && ! bnpo_truthy "$USE_FORMAT_REWARD"; then
        bnpo_die "ADV_ESTIMATOR=ad_bnpo uses the 'format' component, which needs USE_FORMAT_REWARD=1 (or set BNPO_COMPONENTS without format)"
      fi
      ;;
  esac
  if [[ -n "${USE_FORMAT_REWARD:-}" ]]; then
    if bnpo_truthy "$USE_FORMAT_REWARD"; then USE_FORMAT_REWARD=true; else USE_FORMAT_REWARD=false; fi
    export USE_FORMAT_REWARD
  fi
  # the format reward expects prompts made with --prompt_template r1, kept in their own folder
  local data_default="$HOME/data/bnpo"
  [[ "${USE_FORMAT_REWARD:-false}" == true ]] && data_default="$HOME/data/bnpo_r1"
  export DATA_DIR="${DATA_DIR:-$data_default}"
  export TRAIN_FILES="${TRAIN_FILES:-$DATA_DIR/math_lighteval/train.parquet}"
  export VAL_FILES="${VAL_FILES:-[$DATA_DIR/math500/test.parquet,$DATA_DIR/amc23/test.parquet,$DATA_DIR/aime24/test.parquet,$DATA_DIR/aime25/test.parquet]}"
  local suffix="$ADV_ESTIMATOR"
  [[ -n "${FIXED_ALPHA:-}${FIXED_BETA:-}" ]] && suffix="${suffix}-a${FIXED_ALPHA:-fit}-b${FIXED_BETA:-fit}"
  export EXPERIMENT_NAME="${EXPERIMENT_NAME:-${prefix}-${suffix}}"
}

bnpo_truthy() {
  case "${1,,}" in 1 | true | yes | on) return 0 ;; *) return 1 ;; esac
}

# Fills the array BNPO_OVERRIDES from the set variables of BNPO_ENV_KEYS.
bnpo_overrides() {
  BNPO_OVERRIDES=()
  local pair var
  for pair in "${BNPO_ENV_KEYS[@]}"; do
    var="${pair%%=*}"
    if [[ -n "${!var:-}" ]]; then
      BNPO_OVERRIDES+=("${pair#*=}=${!var}")
    fi
  done
}

# The verl command line for this run: main_ppo, the recipe config, env overrides, then "$@".
# DRY_RUN=1 prints the composed config as YAML (Hydra's --cfg job) instead of training.
bnpo_main_cmd() {
  bnpo_overrides
  BNPO_CMD=("$PYTHON" -m verl.trainer.main_ppo --config-path="$BNPO_CONFIG_DIR" --config-name="$BNPO_CONFIG_NAME")
  if bnpo_truthy "${DRY_RUN:-0}"; then
    BNPO_CMD+=(--cfg job)
  fi
  BNPO_CMD+=("${BNPO_OVERRIDES[@]}" "$@")
}

# Entry point of the run scripts.
bnpo_run() {
  bnpo_main_cmd "$@"
  if ! bnpo_truthy "${DRY_RUN:-0}"; then
    printf 'bnpo: %q ' "${BNPO_CMD[@]}" >&2
    echo >&2
  fi
  exec "${BNPO_CMD[@]}"
}
