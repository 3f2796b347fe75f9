#!/usr/bin/env bash
# Every dataset of the paper's runs in one go: MATH (train/test), MATH-500, AMC23, AIME24, AIME25.
#   bash data_preprocess/prepare_paper_data.sh [qwen|r1]
# qwen (default): the paper's boxed prompt, written to ~/data/bnpo/<name>/;
# r1: the <think>/<answer> prompt for format-reward (AD-BNPO) runs, written to ~/data/bnpo_r1/<name>/.
# These are the folders the run scripts read by default.
# Env: DATA_DIR (output root), LOCAL_DATA_ROOT (local copies as $LOCAL_DATA_ROOT/<name>, e.g.
# math_lighteval/, math500/; without it the Hugging Face hub), SKIP_BAD_ROWS=1, PYTHON,
# N_REPEAT=<n> (also write test_repeated.parquet, every row n times, for the four validation sets;
# the authors' default is 1, no such file).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="${1:-qwen}"
case "$TEMPLATE" in
  qwen) DATA_DIR="${DATA_DIR:-$HOME/data/bnpo}" ;;
  r1) DATA_DIR="${DATA_DIR:-$HOME/data/bnpo_r1}" ;;
  *) echo "error: prompt template must be qwen or r1, not '$TEMPLATE'" >&2; exit 2 ;;
esac
EXTRA=()
[[ "${SKIP_BAD_ROWS:-0}" == 1 ]] && EXTRA+=(--skip_bad_rows)
for name in math_lighteval math500 amc23 aime24 aime25; do
  SOURCE=()
  [[ -n "${LOCAL_DATA_ROOT:-}" ]] && SOURCE=(--local_dataset_path "$LOCAL_DATA_ROOT/$name")
  REPEAT=()
  [[ "$name" != math_lighteval ]] && REPEAT=(--n_repeat "${N_REPEAT:-1}")
  "${PYTHON:-python3}" "$HERE/$name.py" "${SOURCE[@]}" --local_save_dir "$DATA_DIR/$name" \
    --prompt_template "$TEMPLATE" "${EXTRA[@]}" "${REPEAT[@]}"
done
echo "data ready in $DATA_DIR"
