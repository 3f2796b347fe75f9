#!/usr/bin/env bash
# BNPO on Qwen2.5-Math-7B, the paper's setting (recipe/bnpo/README.md): MATH train, 1 node x 4 GPUs.
#   bash scripts/run_qwen_math_7b.sh [hydra.key=value ...]
# Settings come from bnpo/recipe/bnpo_trainer.yaml; env vars of scripts/_common.sh
# (MODEL_PATH, DATA_DIR, NNODES, N_GPUS_PER_NODE, ADV_ESTIMATOR, USE_FORMAT_REWARD, ...) and the
# arguments override them. DRY_RUN=1 checks the run and prints its config and memory plan (no GPU needed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
bnpo_defaults Qwen/Qwen2.5-Math-7B qwen2.5-math-7b "$@"
bnpo_run "$@"
