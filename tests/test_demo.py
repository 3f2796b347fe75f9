"""The CPU demo (``python -m bnpo.demo``): its task, its estimator set-ups and the outputs of a real ``--quick`` run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_cli import run_demo

from bnpo.demo.__main__ import QUICK, parse_args
from bnpo.demo.experiment import ESTIMATORS, Settings, algorithm_config, rollout
from bnpo.demo.report import COLUMNS, RUN_STATS
from bnpo.demo.task import EOS, PAD, SEP, ReverseTask, build_policy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ESTIMATORS = ("bnpo", "grpo", "reinforce")
BNPO_COLUMNS = ("bnpo_mu", "bnpo_var", "bnpo_a", "bnpo_b", "bnpo_alpha", "bnpo_beta")


# ------------------------------------------------------------------------------------------- the task


def test_reward_is_exact_match_of_the_reversed_digits():
    task = ReverseTask(min_digits=1, max_digits=4)
    prompts = torch.tensor([[PAD, 1, 2, 3, SEP], [4, 5, 6, 7, SEP], [PAD, PAD, PAD, 9, SEP]])
    right = torch.tensor([[3, 2, 1, EOS, 5], [7, 6, 5, 4, EOS], [9, EOS, 0, 0, 0]])  # tokens after EOS don't count
    assert task.reward(prompts, right).tolist() == [1.0, 1.0, 1.0]
    wrong = torch.tensor([[3, 2, 2, EOS, 5], [7, 6, 5, 4, 4], [9, 9, EOS, 0, 0]])  # a digit, no EOS, too long
    assert task.reward(prompts, wrong).tolist() == [0.0, 0.0, 0.0]
    early_eos = torch.tensor([[3, 2, EOS, EOS, 0]])
    assert task.reward(prompts[:1], early_eos).tolist() == [0.0]


def test_sampled_prompts_are_well_formed_and_reproducible():
    task = ReverseTask(min_digits=2, max_digits=5)
    prompts = task.sample_prompts(200, torch.Generator().manual_seed(0))
    assert prompts.shape == (200, task.prompt_length)
    assert (prompts[:, -1] == SEP).all()
    body = prompts[:, :-1]
    lengths = (body != PAD).sum(1)
    assert lengths.min() >= 2 and lengths.max() <= 5 and len(set(lengths.tolist())) == 4
    # padding only on the left: once a digit appears, no PAD follows
    assert ((body != PAD).long().cummax(1).values == (body != PAD).long()).all()
    assert torch.equal(prompts, task.sample_prompts(200, torch.Generator().manual_seed(0)))
    target, counted = task.targets(prompts)
    assert task.reward(prompts, target).eq(1).all()
    assert torch.equal(counted.sum(1), lengths + 1)  # the digits and the EOS


def test_reinforce_setups_agree_and_bnpo_differs_on_a_real_rollout():
    """'reinforce' (bnpo at fixed (1, 1)) and verl's grpo without std give the same advantages."""
    from verl.trainer.ppo.ray_trainer import compute_advantage

    s = Settings(prompts_per_step=8, rollout_n=8)
    torch.manual_seed(0)
    model = build_policy(s.hidden_size, s.num_layers, s.num_heads, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = rollout(s, model, s.task.sample_prompts(8, generator), generator)
    rewards = batch.batch["token_level_rewards"].sum(1)
    rewards_by_question = rewards.view(8, 8)
    # force a mixed batch so the estimators have something to disagree about
    rewards_by_question[:4] = (torch.arange(8) < torch.arange(1, 5).unsqueeze(1)).float()
    batch.batch["token_level_rewards"].zero_()
    last = batch.batch["response_mask"].sum(1) - 1
    batch.batch["token_level_rewards"][torch.arange(64), last] = rewards_by_question.flatten()

    def advantages(name: str) -> torch.Tensor:
        spec = ESTIMATORS[name]
        out = compute_advantage(
            batch.select(deepcopy=True),
            spec.adv_estimator,
            norm_adv_by_std_in_grpo=spec.norm_adv_by_std_in_grpo,
            config=algorithm_config(spec),
        )
        return out.batch["advantages"]

    reinforce, no_std = advantages("reinforce"), advantages("grpo_no_std")
    torch.testing.assert_close(reinforce, no_std, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(advantages("bnpo"), reinforce)
    assert not torch.allclose(advantages("grpo"), reinforce)


def test_cli_validates_its_options():
    assert parse_args([]) == (Settings(), Path("bnpo_demo_out"), True)
    settings, out, progress = parse_args(["--quick", "--out", "somewhere", "--estimators", "bnpo", "grpo"])
    assert settings.steps == QUICK["steps"] and len(settings.seeds) == QUICK["seeds"]
    assert settings.estimators == ("bnpo", "grpo") and out == Path("somewhere") and progress
    assert parse_args(["--seeds", "5", "--steps", "7"])[0].seeds == (0, 1, 2, 3, 4)
    for bad in (["--estimators", "ppo"], ["--seeds", "0"], ["--steps", "1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ------------------------------------------------------------------------------ a real --quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    stdout = run_demo("--quick", "--out", str(out), cwd=tmp_path_factory.getbasetemp())
    assert "grad-norm mean" in stdout  # the summary table
    return out


def _csv_rows(out: Path) -> tuple[list[str], list[dict]]:
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_quick_run_writes_every_output(quick_run: Path):
    for name in ("summary.json", "metrics.csv", "gradnorm.png", "reward.png"):
        path = quick_run / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("gradnorm.png", "reward.png"):
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (quick_run / name).stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_summary_schema_and_finite_numbers(quick_run: Path):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert set(summary["estimators"]) == set(DEFAULT_ESTIMATORS)
    assert summary["settings"]["steps"] == QUICK["steps"]
    for name, entry in summary["estimators"].items():
        assert entry["seeds"] == QUICK["seeds"] and len(entry["per_seed"]) == QUICK["seeds"]
        for key in RUN_STATS:
            assert math.isfinite(entry[key]) and math.isfinite(entry[f"{key}_sd"]), (name, key)
            values = [seed_stats[key] for seed_stats in entry["per_seed"].values()]
            assert entry[key] == pytest.approx(np.mean(values)), (name, key)
        assert 0.0 <= entry["initial_reward"] <= 1.0 and 0.0 <= entry["final_reward"] <= 1.0
        assert entry["grad_norm_mean"] > 0 and entry["grad_norm_std"] > 0
        assert entry["grad_norm_cv"] == pytest.approx(
            np.mean([v["grad_norm_std"] / v["grad_norm_mean"] for v in entry["per_seed"].values()])
        )
    # same initial weights and evaluation for every estimator of a seed
    initial = {name: e["per_seed"] for name, e in summary["estimators"].items()}
    for seed in initial["bnpo"]:
        assert len({initial[name][seed]["initial_reward"] for name in DEFAULT_ESTIMATORS}) == 1


def test_metrics_csv_has_one_row_per_step_seed_and_estimator(quick_run: Path):
    header, rows = _csv_rows(quick_run)
    assert tuple(header) == COLUMNS
    for column in ("reward", "grad_norm", "adv_mean", "adv_std", "bnpo_a", "bnpo_b", "bnpo_alpha", "bnpo_beta"):
        assert column in header
    keys = [(r["estimator"], int(r["seed"]), int(r["step"])) for r in rows]
    seeds, steps = range(QUICK["seeds"]), range(1, QUICK["steps"] + 1)
    expected = {(e, seed, step) for e in DEFAULT_ESTIMATORS for seed in seeds for step in steps}
    assert len(keys) == len(expected) and set(keys) == expected
    for r in rows:
        grad_norm = float(r["grad_norm"])
        # a batch in which every question's samples agree carries no signal: its gradient is exactly 0
        assert math.isfinite(grad_norm) and (grad_norm > 0 if float(r["mixed_frac"]) > 0 else grad_norm >= 0)
        assert 0.0 <= float(r["reward"]) <= 1.0
        assert all(math.isfinite(float(r[c])) for c in ("adv_mean", "adv_std", "adv_abs_max", "ppo_kl", "lr"))


def test_bnpo_columns_follow_the_spec(quick_run: Path):
    _, rows = _csv_rows(quick_run)
    for r in rows:
        if r["estimator"] == "grpo":  # verl's GRPO records no BNPO statistics
            assert all(r[c] == "" for c in BNPO_COLUMNS)
            continue
        a, b, alpha, beta = (float(r[c]) for c in ("bnpo_a", "bnpo_b", "bnpo_alpha", "bnpo_beta"))
        if r["estimator"] == "reinforce":
            assert alpha == beta == 1.0
        else:  # the paper's Theorem 1, clamped at 1 as the reference: alpha = max(1, 1 + a/3), beta = max(1, 1 + b/3)
            assert alpha == pytest.approx(max(1.0, 1 + a / 3)) and beta == pytest.approx(max(1.0, 1 + b / 3))


def test_every_estimator_starts_from_the_same_rollouts(quick_run: Path):
    """Step 1 samples from the same weights with the same questions and sampler state for every estimator."""
    _, rows = _csv_rows(quick_run)
    for seed in range(QUICK["seeds"]):
        first = [r for r in rows if int(r["step"]) == 1 and int(r["seed"]) == seed]
        assert len({(r["reward"], r["mixed_frac"], r["response_length"]) for r in first}) == 1
