#!/usr/bin/env bash
# Submit a BNPO run to an existing Ray cluster with `ray job submit`.
#   RAY_ADDRESS=http://<head>:8265 bash scripts/submit_ray_job.sh [hydra.key=value ...]
#
# The job runs RUN_SCRIPT (default scripts/run_qwen_math_7b.sh) from the cluster's copy of this
# project: the runtime env's working_dir uploads the project (without .venv, .git, outputs, data),
# Ray puts that copy on every worker's sys.path, and VERL_USE_EXTERNAL_MODULES=bnpo.verl_plugin makes
# `import verl` register bnpo / ad_bnpo in every process, also on nodes where bnpo is not installed
# (they still need verl and math-verify: pip install 'bnpo[rewards]' deps, or RUNTIME_PIP below).
#
# Env vars:
#   RAY_ADDRESS         the cluster's dashboard address (required), e.g. http://10.0.0.1:8265
#   RUN_SCRIPT          the run script the job executes (default scripts/run_qwen_math_7b.sh)
#   the run scripts' variables (MODEL_PATH, DATA_DIR, NNODES, ADV_ESTIMATOR, ... see _common.sh):
#                       those set here are forwarded to the job; the others take their defaults
#                       on the cluster (DATA_DIR defaults to the cluster's $HOME/data/bnpo)
#   FORWARD_ENV         more variable names to forward when set (default: WANDB_API_KEY HF_HOME HF_TOKEN)
#   RUNTIME_PIP         space-separated pip requirements installed for the job by Ray (default: none)
#   RAY_SUBMIT_ARGS     extra `ray job submit` flags, e.g. "--no-wait --submission-id bnpo-7b-1"
#   BNPO_JOB_ENTRYPOINT a shell command run by the job instead of RUN_SCRIPT (checks, debugging)
#   DRY_RUN=1           print the composed Hydra config (locally) and the submit command; submit nothing
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RUN_SCRIPT="${RUN_SCRIPT:-scripts/run_qwen_math_7b.sh}"
[[ -f "$BNPO_ROOT/$RUN_SCRIPT" ]] || bnpo_die "RUN_SCRIPT=$RUN_SCRIPT: no such file under $BNPO_ROOT (give a path relative to the project)"

if [[ -n "${BNPO_JOB_ENTRYPOINT:-}" ]]; then
  ENTRYPOINT=(bash -c "$BNPO_JOB_ENTRYPOINT")
else
  ENTRYPOINT=(bash "$RUN_SCRIPT" "$@")
fi

# The job's runtime env as JSON: the project as working_dir, the set variables as env_vars.
FORWARD_NAMES="DATA_DIR PYTHON CONFIG_NAME ${FORWARD_ENV:-WANDB_API_KEY HF_HOME HF_TOKEN}"
for pair in "${BNPO_ENV_KEYS[@]}"; do FORWARD_NAMES+=" ${pair%%=*}"; done
RUNTIME_ENV_JSON="$(
  FORWARD_NAMES="$FORWARD_NAMES" BNPO_ROOT="$BNPO_ROOT" "$PYTHON" - <<'PY'
import json, os

env_vars = {name: os.environ[name] for name in os.environ["FORWARD_NAMES"].split() if os.environ.get(name)}
# registers bnpo / ad_bnpo on import of verl even where bnpo is only on sys.path (no entry point)
env_vars["VERL_USE_EXTERNAL_MODULES"] = "bnpo.verl_plugin"
runtime_env = {
    "working_dir": os.environ["BNPO_ROOT"],
    "excludes": [
        ".git", ".venv", "venv", "outputs", "checkpoints", "wandb", "runs", "bnpo_demo_out", "data",
        "*.parquet", "*.safetensors", "*.pt", "__pycache__", ".pytest_cache", ".hypothesis",
        "*.egg-info", "build", "dist",
    ] + os.environ.get("EXTRA_EXCLUDES", "").split(),
    "env_vars": env_vars,
}
pip = os.environ.get("RUNTIME_PIP", "").split()
if pip:
    runtime_env["pip"] = pip
print(json.dumps(runtime_env))
PY
)"

# shellcheck disable=SC2206  # RAY_SUBMIT_ARGS is a list of flags on purpose
SUBMIT=(ray job submit --address "${RAY_ADDRESS:-}" --runtime-env-json "$RUNTIME_ENV_JSON" ${RAY_SUBMIT_ARGS:-} -- "${ENTRYPOINT[@]}")

if bnpo_truthy "${DRY_RUN:-0}"; then
  printf '%q ' "${SUBMIT[@]}" >&2
  echo >&2
  [[ -n "${BNPO_JOB_ENTRYPOINT:-}" ]] && exit 0
  exec bash "$BNPO_ROOT/$RUN_SCRIPT" "$@"
fi

[[ -n "${RAY_ADDRESS:-}" ]] || bnpo_die "set RAY_ADDRESS to the Ray dashboard of the cluster, e.g. RAY_ADDRESS=http://<head-ip>:8265"
exec "${SUBMIT[@]}"
