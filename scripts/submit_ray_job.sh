#!/usr/bin/env bash
# Submit a BNPO run to an existing Ray cluster with `ray job submit`.
#   RAY_ADDRESS=http://<head>:8265 [CKPT_DIR=/shared/ckpt/run1] bash scripts/submit_ray_job.sh [hydra.key=value ...]
#
# The job runs RUN_SCRIPT (default scripts/run_qwen_math_7b.sh) from the cluster's copy of this
# project: the runtime env's working_dir uploads the project (without .venv, .git, outputs, data),
# Ray puts that copy on every worker's sys.path, and VERL_USE_EXTERNAL_MODULES=bnpo.verl.plugin makes
# `import verl` register bnpo / ad_bnpo in every process, also on nodes where bnpo is not installed
# (they still need verl and math-verify: pip install 'bnpo[rewards]' deps, or RUNTIME_PIP below).
#
# Env vars:
#   RAY_ADDRESS         the cluster's dashboard address (required), e.g. http://10.0.0.1:8265
#   CKPT_DIR            absolute checkpoint folder on storage every node of the cluster sees
#                       (trainer.default_local_dir); required. The job's pre-flight checks that every
#                       node sees it, the data and a local model (bnpo.verl.preflight.storage)
#   RUN_SCRIPT          the run script the job executes (default scripts/run_qwen_math_7b.sh)
#   the run scripts' variables (MODEL_PATH, DATA_DIR, NNODES, ADV_ESTIMATOR, ... see _common.sh):
#                       those set here are forwarded to the job; the others take their defaults
#                       on the cluster (DATA_DIR defaults to the job user's $HOME/data/bnpo there,
#                       which every node must see)
#   FORWARD_ENV         names of more variables to forward (default: none). Forwarded values are
#                       stored with the job and shown by the Ray dashboard and job API: give secrets
#                       (WANDB_API_KEY, HF_TOKEN) to the nodes' environment instead (recipe README)
#   VERL_USE_EXTERNAL_MODULES  other verl plugin modules to import in every process of the job (comma-separated;
#                       bnpo.verl.plugin is always added): the way to load plugins where entry points are off
#                       (VERL_USE_EXTERNAL_PLUGINS=none, forwarded with FORWARD_ENV)
#   RUNTIME_PIP         space-separated pip requirements installed for the job by Ray (default: none)
#   RAY_SUBMIT_ARGS     extra `ray job submit` flags, e.g. "--no-wait --submission-id bnpo-7b-1"
#   BNPO_JOB_ENTRYPOINT a shell command run by the job instead of RUN_SCRIPT (checks, debugging)
#   DRY_RUN=1           print the runtime env (forwarded values masked), the submit command and the
#                       composed Hydra config (locally); submit nothing
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RUN_SCRIPT="${RUN_SCRIPT:-scripts/run_qwen_math_7b.sh}"
[[ -f "$BNPO_ROOT/$RUN_SCRIPT" ]] || bnpo_die "RUN_SCRIPT=$RUN_SCRIPT: no such file under $BNPO_ROOT (give a path relative to the project)"

if [[ -n "${BNPO_JOB_ENTRYPOINT:-}" ]]; then
  ENTRYPOINT=(bash -c "$BNPO_JOB_ENTRYPOINT")
else
  ENTRYPOINT=(bash "$RUN_SCRIPT" "$@")
fi

# Checkpoints: every FSDP rank writes its shard on its own node and the trainer (on any node) reads verl's tracker
# on its node, so the folder must be storage every node of the cluster sees; a relative one would land in Ray's
# per-job temporary folder. Nothing machine-local is computed here: the path is the user's, checked in the job.
CKPT_RUN="$(bnpo_setting trainer.default_local_dir CKPT_DIR '' "$@")"
if [[ -z "$CKPT_RUN" ]]; then
  bnpo_die "set CKPT_DIR to an absolute folder on storage that every node of the cluster sees (e.g. CKPT_DIR=/shared/checkpoints/bnpo-7b): each node writes its checkpoint shards there, and a rerun resumes from it"
elif [[ "$CKPT_RUN" != /* ]]; then
  bnpo_die "CKPT_DIR=$CKPT_RUN must be an absolute path on the cluster's nodes (a relative one lands in Ray's per-job temporary folder)"
fi

# The job's runtime env: the project as working_dir, the set variables as env_vars.
# PYTHON is not forwarded: it names an interpreter of this machine (the job uses the cluster's python3)
FORWARD_NAMES="DATA_DIR CONFIG_NAME ${FORWARD_ENV:-}"
for pair in "${BNPO_ENV_KEYS[@]}"; do FORWARD_NAMES+=" ${pair%%=*}"; done
RUNTIME_ENV_FILE="$(mktemp "${TMPDIR:-/tmp}/bnpo_runtime_env.XXXXXX.json")"  # mode 600: it may hold secrets
trap 'rm -f "$RUNTIME_ENV_FILE"' EXIT
FORWARD_NAMES="$FORWARD_NAMES" MASKED="${FORWARD_ENV:-}" BNPO_ROOT="$BNPO_ROOT" SHOW="${DRY_RUN:-0}" \
  "$PYTHON" - "$RUNTIME_ENV_FILE" <<'PY'
import json, os, sys

env_vars = {name: os.environ[name] for name in os.environ["FORWARD_NAMES"].split() if os.environ.get(name)}
# registers bnpo / ad_bnpo on import of verl even where bnpo is only on sys.path (no entry point); modules already
# named in VERL_USE_EXTERNAL_MODULES (other verl plugins, needed where entry points are off) are kept, before bnpo's
modules = [m.strip() for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m.strip()]
env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join([m for m in modules if m != "bnpo.verl.plugin"] + ["bnpo.verl.plugin"])
runtime_env = {
    "working_dir": os.environ["BNPO_ROOT"],
    "excludes": [
        ".git", ".venv", "venv", "outputs", "checkpoints", "wandb", "runs", "bnpo_demo_out", "bnpo_probe_out",
        "bnpo_format_out", "gpu_check_out", "data",
        "*.parquet", "*.safetensors", "*.pt", "__pycache__", ".pytest_cache", ".hypothesis",
        "*.egg-info", "build", "dist",
    ] + os.environ.get("EXTRA_EXCLUDES", "").split(),
    "env_vars": env_vars,
}
pip = os.environ.get("RUNTIME_PIP", "").split()
if pip:
    runtime_env["pip"] = pip
with open(sys.argv[1], "w") as f:
    json.dump(runtime_env, f)
masked = [name for name in os.environ["MASKED"].split() if name in env_vars]
if masked:
    print(f"bnpo: forwarding {', '.join(masked)} (FORWARD_ENV): Ray keeps these values with the job and shows "
          "them in the dashboard and job API", file=sys.stderr)
if os.environ["SHOW"] in ("1", "true", "yes", "on"):
    shown = {**runtime_env, "env_vars": {k: "***" if k in masked else v for k, v in env_vars.items()}}
    print("bnpo: runtime env " + json.dumps(shown), file=sys.stderr)
PY

# shellcheck disable=SC2206  # RAY_SUBMIT_ARGS is a list of flags on purpose
SUBMIT=(ray job submit --address "${RAY_ADDRESS:-}" --runtime-env "$RUNTIME_ENV_FILE" ${RAY_SUBMIT_ARGS:-} -- "${ENTRYPOINT[@]}")

if bnpo_truthy "${DRY_RUN:-0}"; then
  printf '%q ' "${SUBMIT[@]}" >&2
  echo >&2
  [[ -n "${BNPO_JOB_ENTRYPOINT:-}" ]] && exit 0
  bash "$BNPO_ROOT/$RUN_SCRIPT" "$@"
  exit
fi

[[ -n "${RAY_ADDRESS:-}" ]] || bnpo_die "set RAY_ADDRESS to the Ray dashboard of the cluster, e.g. RAY_ADDRESS=http://<head-ip>:8265"
"${SUBMIT[@]}"
