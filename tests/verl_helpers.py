"""Shared by the verl integration tests: verl's real Hydra config and subprocess runs of verl."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from batches import outcome_batch
from hydra import compose, initialize_config_dir

import verl
from verl import DataProto

ROOT = Path(__file__).resolve().parents[1]
VERL_CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def verl_config(*overrides: str):
    """verl's ppo_trainer config composed with command-line style overrides (as main_ppo sees it)."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=list(overrides))


def run_python(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """A fresh interpreter of this venv (nothing imported but what ``args`` imports)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def legacy_batch(rewards, uids, **fields) -> DataProto:
    """A DataProto as verl's legacy trainer has it at the advantage step (reward on the last response token)."""
    trl, mask, index = outcome_batch(rewards, uids)
    bs, length = trl.shape
    tensors = {
        "token_level_scores": trl, "token_level_rewards": trl, "response_mask": mask,
        "responses": torch.zeros(bs, length, dtype=torch.long), "prompts": torch.zeros(bs, 3, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(bs, 3), mask], dim=1).long(),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": index, **fields})
