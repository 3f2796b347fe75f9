#!/usr/bin/env bash
# End-to-end smoke run of verl's own PPO trainer on a CPU-only machine, with BNPO as the estimator.
#
#   bash scripts/run_cpu_smoke.sh            # algorithm.adv_estimator=bnpo
#   bash scripts/run_cpu_smoke.sh ad_bnpo    # AD-BNPO over the reward components acc and format
#   bash scripts/run_cpu_smoke.sh bnpo trainer.total_training_steps=3   # extra Hydra overrides
#
# It runs `python -m verl.trainer.main_ppo`: verl's v1 sync trainer (bnpo logs bnpo/* and hands AD-BNPO its
# reward components in every trainer mode), a fresh local Ray instance, verl's FSDP2 actor on CPU over gloo, verl's agent loop and reward
# loop; on a 2-layer Llama with a word-level tokenizer and a modular-addition dataset, all
# generated into $BNPO_SMOKE_DIR first.
# Rollouts come from this project's CPU rollout backend (`rollout.name=hf_cpu`, transformers
# `generate`; bnpo/cpu_rollout), a development and testing backend, not a speed path.
# The console logger prints every step's metrics; the log is kept in $BNPO_SMOKE_DIR/train.log.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-bnpo}"
[ $# -gt 0 ] && shift
case "$MODE" in
  bnpo) ESTIMATOR_ARGS=(algorithm.adv_estimator=bnpo) ;;
  ad_bnpo) ESTIMATOR_ARGS=(algorithm.adv_estimator=ad_bnpo "+algorithm.bnpo.components=[acc,format]") ;;
  *) echo "usage: $0 [bnpo|ad_bnpo] [hydra overrides...]  (got mode '$MODE')" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi

OUT="${BNPO_SMOKE_DIR:-$(mktemp -d -t bnpo_cpu_smoke.XXXXXX)}"
mkdir -p "$OUT"
"$PYTHON" scripts/cpu_smoke/make_assets.py "$OUT" --train-rows 64

# VERL_PLATFORM=cpu selects the CPU platform that bnpo.cpu_rollout registers in every process;
# VERL_ENGINE_DEVICE=cuda makes verl pick its FSDP engine class, which is registered for cuda/npu
# only but runs on whatever device the platform names (here: cpu).
export VERL_PLATFORM=cpu
export VERL_ENGINE_DEVICE=cuda
# bnpo.verl_plugin (the verl.plugins entry point) registers bnpo.cpu_rollout in every process when VERL_PLATFORM=cpu.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=0
unset RAY_ADDRESS

"$PYTHON" -m verl.trainer.main_ppo \
  "${ESTIMATOR_ARGS[@]}" \
  algorithm.use_kl_in_reward=False \
  data.train_files="$OUT/train.parquet" \
  data.val_files="$OUT/train.parquet" \
  data.train_batch_size=4 \
  data.max_prompt_length=32 \
  data.max_response_length=16 \
  data.dataloader_num_workers=0 \
  data.shuffle=False \
  actor_rollout_ref.model.path="$OUT/model" \
  actor_rollout_ref.model.use_remove_padding=False \
  actor_rollout_ref.model.enable_gradient_checkpointing=False \
  actor_rollout_ref.model.external_lib=bnpo.cpu_rollout.process_group \
  +actor_rollout_ref.model.override_config.attn_implementation=eager \
  actor_rollout_ref.actor.strategy=fsdp2 \
  actor_rollout_ref.actor.fsdp_config.strategy=fsdp2 \
  actor_rollout_ref.actor.fsdp_config.dtype=float32 \
  actor_rollout_ref.actor.fsdp_config.use_torch_compile=False \
  actor_rollout_ref.actor.use_torch_compile=False \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.optim.lr=1e-3 \
  actor_rollout_ref.actor.ppo_mini_batch_size=4 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.name=hf_cpu \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.dtype=float32 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  reward.num_workers=1 \
  reward.custom_reward_function.path=scripts/cpu_smoke/reward.py \
  reward.custom_reward_function.name=compute_score \
  transfer_queue.backend.SimpleStorage.num_data_storage_units=1 \
  trainer.device=cpu \
  trainer.nnodes=1 \
  trainer.n_gpus_per_node=1 \
  trainer.logger=[console] \
  trainer.project_name=bnpo_cpu_smoke \
  trainer.experiment_name="$MODE" \
  trainer.default_local_dir="$OUT/checkpoints" \
  trainer.total_epochs=1 \
  trainer.total_training_steps=2 \
  trainer.val_before_train=False \
  trainer.test_freq=-1 \
  trainer.save_freq=-1 \
  ray_kwargs.ray_init.num_cpus=8 \
  +ray_kwargs.ray_init.num_gpus=1 \
  +ray_kwargs.ray_init.address=local \
  "$@" 2>&1 | tee "$OUT/train.log"
echo "log: $OUT/train.log"
