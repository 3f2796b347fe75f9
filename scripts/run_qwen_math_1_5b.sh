#!/usr/bin/env bash
# BNPO on Qwen2.5-Math-1.5B with the paper's setting (recipe/bnpo/README.md): MATH train, 1 node x 4 GPUs.
#   bash scripts/run_qwen_math_1_5b.sh [hydra.key=value ...]
# Same recipe and env vars as run_qwen_math_7b.sh (see scripts/_common.sh); DRY_RUN=1 prints
# the composed config, the checks and the memory plan.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
bnpo_defaults Qwen/Qwen2.5-Math-1.5B qwen2.5-math-1.5b "$@"
bnpo_run "$@"
