#!/usr/bin/env bash
# Install the GPU stack verl 0.9.1 declares for this recipe, and this project, into the active virtual environment
# or into $VENV (default .venv, created if missing). docs/gpu.md explains each step.
#
#   bash scripts/install_gpu.sh                                   # then: DRY_RUN=1 bash scripts/run_qwen_math_7b.sh
#   FLASH_ATTN_WHEEL=/path/or/url/flash_attn-2.8.3+...whl bash scripts/install_gpu.sh   # a prebuilt flash-attn
#
# 1. The NVIDIA driver: torch 2.11.0 and vllm 0.24.0 (verl's pins) are CUDA 13 builds, which need driver 580 or newer.
# 2. torch 2.11.0 first, so that flash-attn's build (step 3) compiles against it.
# 3. flash-attn 2.8.3 (verl[fsdp] pins it; the actor's attention): PyPI has only its source. FLASH_ATTN_WHEEL installs a
#    prebuilt wheel for CUDA 13 / torch 2.11 / this Python; otherwise pip builds it (flash-attn's setup first looks
#    for a prebuilt wheel of its own, then compiles with nvcc: an hour or more, MAX_JOBS parallel jobs, ~4 GB each).
# 4. This project with its gpu extra: verl[vllm,fsdp]==0.9.1 (vllm 0.24.0, transformers 5.9.0) and math-verify.
# 5. The check: the installed versions against verl's pins (python -m bnpo.verl.preflight.stack).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_DRIVER=580

if [ -z "${VIRTUAL_ENV:-}" ]; then
  VENV="${VENV:-.venv}"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  . "$VENV/bin/activate"
fi

echo "[1/5] NVIDIA driver" >&2
if ! command -v nvidia-smi >/dev/null; then
  echo "error: nvidia-smi not found: this installs the CUDA stack for NVIDIA GPUs (CPU machines: bash scripts/install_cpu_e2e.sh)" >&2
  exit 2
fi
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 | tr -d ' ')"
if [ "${driver%%.*}" -lt "$MIN_DRIVER" ] 2>/dev/null; then
  echo "error: NVIDIA driver $driver; torch 2.11.0 and vllm 0.24.0 (verl 0.9.1's pins) are CUDA 13 builds and need driver" \
       "$MIN_DRIVER or newer. Update the driver, or see docs/gpu.md 'Older drivers'. BNPO_ALLOW_OLD_DRIVER=1 installs" \
       "anyway (for a CUDA forward-compatibility setup)." >&2
  [ "${BNPO_ALLOW_OLD_DRIVER:-0}" = 1 ] || exit 2
fi
echo "      driver $driver" >&2

echo "[2/5] torch 2.11.0 (CUDA 13)" >&2
python -m pip install --upgrade pip
python -m pip install torch==2.11.0

echo "[3/5] flash-attn 2.8.3" >&2
if python -c "import flash_attn, sys; sys.exit(flash_attn.__version__ != '2.8.3')" 2>/dev/null; then
  echo "      already installed" >&2
elif [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
  python -m pip install --no-deps "$FLASH_ATTN_WHEEL"
else
  echo "      building from source (no FLASH_ATTN_WHEEL given): this can take an hour or more" >&2
  # --no-build-isolation (to compile against the torch of step 2) means flash-attn's setup.py imports its build
  # tools from this venv, which a fresh one lacks; ninja makes the build parallel
  python -m pip install setuptools wheel packaging psutil ninja
  MAX_JOBS="${MAX_JOBS:-4}" python -m pip install --no-build-isolation flash-attn==2.8.3
fi

echo "[4/5] bnpo[gpu]: verl[vllm,fsdp]==0.9.1, math-verify" >&2
python -m pip install -e ".[gpu]"

echo "[5/5] versions against verl's pins" >&2
python -m bnpo.verl.preflight.stack
