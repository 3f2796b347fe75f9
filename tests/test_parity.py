"""recipe/bnpo/README.md's parity tables against what the recipe really does: every "ours" value is
read back from the composed config (DRY_RUN of the run script), the reward module or the
preprocessing, so the table and the code cannot drift apart; every setting of the authors' run.sh
has a row; a row whose values differ says why."""

from __future__ import annotations

import ast
import importlib
import re
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from recipe_helpers import HOME, ROOT, composed

README = ROOT / "recipe/bnpo/README.md"
MAIN_HEADER = ["authors' setting", "authors", "ours: key", "ours", "same, or why not"]
FORMAT_HEADER = ["authors' setting", "authors", "ours: key", "USE_FORMAT_REWARD=1", "ADV_ESTIMATOR=ad_bnpo", "why"]

# Every override of the authors' recipe/bnpo/run.sh (changyi7231/BNPO), "actor_rollout_ref." dropped.
AUTHORS_RUN_SH = [
    "data.train_files", "data.val_files", "data.prompt_key", "data.reward_fn_key", "data.max_prompt_length",
    "data.max_response_length", "data.train_batch_size", "data.filter_overlong_prompts", "data.truncation",
    "actor_rollout_ref.model.path", "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.model.use_remove_padding", "actor.ppo_mini_batch_size", "actor.use_dynamic_bsz",
    "actor.ppo_max_token_len_per_gpu", "actor.grad_clip", "actor.clip_ratio_low", "actor.clip_ratio_high",
    "actor.clip_ratio_c", "actor.loss_agg_mode", "actor.entropy_coeff", "actor.use_kl_loss", "actor.kl_loss_coef",
    "actor.ppo_epochs", "actor.ulysses_sequence_parallel_size", "actor.optim.lr", "actor.optim.lr_warmup_steps",
    "actor.optim.weight_decay", "actor.fsdp_config.param_offload", "actor.fsdp_config.optimizer_offload",
    "ref.fsdp_config.param_offload", "rollout.temperature", "rollout.top_p", "rollout.gpu_memory_utilization",
    "rollout.tensor_model_parallel_size", "rollout.max_num_batched_tokens", "rollout.n",
    "rollout.val_kwargs.temperature", "rollout.val_kwargs.top_p", "rollout.val_kwargs.n",
    "rollout.val_kwargs.do_sample", "reward_model.reward_manager", "algorithm.adv_estimator",
    "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.kl_coef", "algorithm.use_advantage_decomposition",
    "algorithm.use_format_reward", "trainer.total_epochs", "trainer.project_name", "trainer.experiment_name",
    "trainer.log_val_generations", "trainer.nnodes", "trainer.n_gpus_per_node", "trainer.save_freq",
    "trainer.test_freq", "trainer.default_local_dir", "VLLM_ATTENTION_BACKEND",
]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parity_table(header: list[str]) -> list[list[str]]:
    """The rows of the README table with this header."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and _cells(line) == header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    assert all(len(row) == len(header) for row in rows), [r for r in rows if len(r) != len(header)]
    return rows


def _code(cell: str) -> str | None:
    """The text of a cell that is one `code span`, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def _expected(cell: str):
    """A value cell as the value it names: "—" is absent / None, `yaml` is parsed, $HOME expanded."""
    if cell == "—":
        return None
    text = _code(cell)
    assert text is not None, f"value cell {cell!r} must be one `code span` or —"
    return yaml.safe_load(text.replace("$HOME", HOME))


def _python_value(key: str):
    """`module:attr.key...`: an attribute of bnpo's reward module or of the preprocessing helper."""
    module_name, path = key.split(":")
    if module_name == "preprocess_utils":
        sys.path.insert(0, str(ROOT / "data_preprocess"))
    value = importlib.import_module(module_name)
    first, *rest = path.split(".")
    value = getattr(value, first)
    for part in rest:
        value = value[part]
    return value


def _test_exists(key: str) -> bool:
    file, name = key.split("::")
    tree = ast.parse((ROOT / file).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def _check(key_cell: str, value_cell: str, cfg) -> None:
    if key_cell == "—":
        return  # no counterpart: the why column says so
    key = _code(key_cell)
    assert key is not None, f"key cell {key_cell!r} must be one `code span` or —"
    if "::" in key:
        assert _test_exists(key), f"{key}: no such test"
        return
    actual = _python_value(key) if ":" in key else OmegaConf.select(cfg, key, default=None)
    if OmegaConf.is_config(actual):
        actual = OmegaConf.to_container(actual, resolve=True)
    expected = _expected(value_cell)
    assert actual == expected, f"{key}: the table says {expected!r}, the recipe has {actual!r}"


MAIN_ROWS = parity_table(MAIN_HEADER)


@pytest.fixture(scope="module")
def paper_config():
    return composed("scripts/run_qwen_math_7b.sh")


@pytest.mark.parametrize("row", MAIN_ROWS, ids=[row[0] for row in MAIN_ROWS])
def test_ours_column_is_what_the_recipe_does(row, paper_config):
    _, authors, key, ours, why = row
    _check(key, ours, paper_config)
    if authors == ours:
        assert why.startswith("same"), row
    else:
        assert why and why != "same", f"{row[0]}: the values differ, the row must say why"


def test_every_setting_of_the_authors_run_sh_has_a_row():
    settings = {_code(row[0].split(" (")[0]) for row in MAIN_ROWS}
    missing = [key for key in AUTHORS_RUN_SH
               if key not in settings and key.removeprefix("actor_rollout_ref.") not in settings]
    assert missing == []


FORMAT_ROWS = parity_table(FORMAT_HEADER)


@pytest.mark.parametrize("row", FORMAT_ROWS, ids=[row[0] for row in FORMAT_ROWS])
def test_format_reward_runs(row):
    _, _, key, with_format, ad_bnpo, why = row
    assert why
    _check(key, with_format, composed("scripts/run_qwen_math_7b.sh", USE_FORMAT_REWARD="1"))
    _check(key, ad_bnpo, composed("scripts/run_qwen_math_7b.sh", ADV_ESTIMATOR="ad_bnpo"))
