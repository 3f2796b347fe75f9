# shellcheck shell=bash
# Shared by scripts/run_qwen_math_*.sh and scripts/submit_ray_job.sh (sourced, not run).
#
# The paper's settings live in bnpo/recipe/bnpo_trainer.yaml. This file only turns the
# environment variables below into Hydra overrides, for the ones that are set, so a variable that
# is unset keeps the recipe's value.

BNPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BNPO_CONFIG_DIR="$BNPO_ROOT/bnpo/recipe"
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
  BNPO_REWARD_MIN=algorithm.bnpo.reward_min
  BNPO_REWARD_MAX=algorithm.bnpo.reward_max
  BNPO_COMPONENTS=++algorithm.bnpo.components
  BNPO_COMPONENT_WEIGHTS=++algorithm.bnpo.component_weights
  USE_FORMAT_REWARD=reward.custom_reward_function.reward_kwargs.format_reward
  REWARD_TIMEOUT_S=reward.custom_reward_function.reward_kwargs.timeout_s
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
  VAL_N=actor_rollout_ref.rollout.val_kwargs.n
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

# bnpo_arg KEY ARGS...: the value the last Hydra override among ARGS gives KEY (KEY=, +KEY= or
# ++KEY=), or nothing.
bnpo_arg() {
  local key="$1" arg value=""
  shift
  for arg in "$@"; do
    arg="${arg#+}"
    arg="${arg#+}"
    [[ "$arg" == "$key="* ]] && value="${arg#*=}"
  done
  printf '%s' "$value"
}

# bnpo_setting KEY VAR DEFAULT ARGS...: what the run will use for KEY: the overrides in ARGS win over
# the variable VAR, which wins over DEFAULT.
bnpo_setting() {
  local key="$1" var="$2" default="$3" value
  shift 3
  value="$(bnpo_arg "$key" "$@")"
  printf '%s' "${value:-${!var:-$default}}"
}

# bnpo_defaults MODEL_PATH_DEFAULT EXPERIMENT_PREFIX ARGS...: fill in what depends on the run script,
# the estimator and the data folder (ARGS: the script's Hydra overrides, which win). Exports, so that
# submit_ray_job.sh can forward the same values.
bnpo_defaults() {
  local model_default="$1" prefix="$2" estimator format_reward
  shift 2
  export MODEL_PATH="${MODEL_PATH:-$model_default}"
  export ADV_ESTIMATOR="${ADV_ESTIMATOR:-bnpo}"
  estimator="$(bnpo_setting algorithm.adv_estimator ADV_ESTIMATOR bnpo "$@")"
  if [[ "$estimator" == ad_bnpo ]]; then
    # AD-BNPO decomposes accuracy and format; both keys come from bnpo.rewards.compute_score
    export USE_FORMAT_REWARD="${USE_FORMAT_REWARD:-true}"
    export BNPO_COMPONENTS="${BNPO_COMPONENTS:-[acc,format]}"
  elif [[ -n "${BNPO_COMPONENTS:-}${BNPO_COMPONENT_WEIGHTS:-}" ]]; then
    bnpo_die "BNPO_COMPONENTS / BNPO_COMPONENT_WEIGHTS only apply to ADV_ESTIMATOR=ad_bnpo (this run uses $estimator)"
  fi
  if [[ -n "${USE_FORMAT_REWARD:-}" ]]; then
    if bnpo_truthy "$USE_FORMAT_REWARD"; then USE_FORMAT_REWARD=true; else USE_FORMAT_REWARD=false; fi
    export USE_FORMAT_REWARD
  fi
  format_reward="$(bnpo_setting reward.custom_reward_function.reward_kwargs.format_reward USE_FORMAT_REWARD false "$@")"
  bnpo_truthy "$format_reward" && format_reward=true || format_reward=false
  if [[ "$estimator" == ad_bnpo && "$(bnpo_setting algorithm.bnpo.components BNPO_COMPONENTS '' "$@")" == *format* \
        && "$format_reward" != true ]]; then
    bnpo_die "ADV_ESTIMATOR=ad_bnpo uses the 'format' component, which needs USE_FORMAT_REWARD=1 (or set BNPO_COMPONENTS without format)"
  fi
  # with the format reward the score is acc + format, in [0, 2]: plain bnpo must declare that range
  # (ad_bnpo maps each component, acc and format, each in [0, 1], with the same reward_min/max)
  if [[ "$estimator" == bnpo && "$format_reward" == true && -z "$(bnpo_setting algorithm.bnpo.reward_max BNPO_REWARD_MAX '' "$@")" ]]; then
    export BNPO_REWARD_MAX=2
  fi
  # the format reward expects prompts made with --prompt_template r1, kept in their own folder
  local data_default="$HOME/data/bnpo"
  [[ "$format_reward" == true ]] && data_default="$HOME/data/bnpo_r1"
  export DATA_DIR="${DATA_DIR:-$data_default}"
  export TRAIN_FILES="${TRAIN_FILES:-$DATA_DIR/math_lighteval/train.parquet}"
  export VAL_FILES="${VAL_FILES:-[$DATA_DIR/math500/test.parquet,$DATA_DIR/amc23/test.parquet,$DATA_DIR/aime24/test.parquet,$DATA_DIR/aime25/test.parquet]}"
  local suffix="$estimator"
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

# The pre-flight of bnpo.verl.preflight (run from this checkout, whether or not bnpo is installed): the run's
# config composed as main_ppo composes it, verl's and bnpo's checks, the GPUs, the GPU stack, the files, the
# checkpoints and the per-GPU memory plan.
bnpo_preflight() {
  PYTHONPATH="$BNPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m bnpo.verl.preflight \
    --config-path "$BNPO_CONFIG_DIR" --config-name "$BNPO_CONFIG_NAME" --script "$0" "$@"
}

# Entry point of the run scripts. DRY_RUN=1: the pre-flight prints the composed config (YAML, stdout) and its
# checks and memory plan (stderr), and exits 2 where a run would fail. Otherwise the pre-flight runs first
# (BNPO_SKIP_PREFLIGHT=1 skips it) and may add launch overrides (every GPU of the node when
# N_GPUS_PER_NODE / trainer.n_gpus_per_node are not given), then main_ppo replaces this shell.
bnpo_run() {
  bnpo_overrides
  if bnpo_truthy "${DRY_RUN:-0}"; then
    bnpo_preflight --dry-run -- "${BNPO_OVERRIDES[@]}" "$@"
    exit
  fi
  local launch=() decided
  if ! bnpo_truthy "${BNPO_SKIP_PREFLIGHT:-${BNPO_SKIP_GPU_CHECK:-0}}"; then
    decided="$(bnpo_preflight -- "${BNPO_OVERRIDES[@]}" "$@")" || exit 2
    [[ -n "$decided" ]] && mapfile -t launch <<< "$decided"
  fi
  BNPO_CMD=("$PYTHON" -m verl.trainer.main_ppo --config-path="$BNPO_CONFIG_DIR" --config-name="$BNPO_CONFIG_NAME"
            "${BNPO_OVERRIDES[@]}" "$@" "${launch[@]}")
  printf 'bnpo: %q ' "${BNPO_CMD[@]}" >&2
  echo >&2
  exec "${BNPO_CMD[@]}"
}
