#!/usr/bin/env bash
# The one command to run the day a GPU is available: the CUDA estimator test, the benchmark's CUDA path, the
# recipe's memory plans against this device's real memory and the plan's estimates measured again, written to
# gpu_check_out/gpu_check.json (docs/gpu.md). Needs torch with CUDA (and numpy, PyYAML, OmegaConf, transformers,
# pytest); not Ray or vLLM, and verl only for the entropy's figure.
#   bash scripts/gpu_check.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" scripts/gpu_check.py "$@"
