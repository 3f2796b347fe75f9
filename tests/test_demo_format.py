"""The demo's format variant (``python -m bnpo.demo format``): the task's two reward components, AD-BNPO through
verl's ``compute_advantage`` on them, and a real run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_cli import run_demo

from bnpo import BNPOConfig, compute_ad_bnpo_advantage
from bnpo.demo.__main__ import FORMAT, parse_args
from bnpo.demo.experiment import ESTIMATORS, Settings, estimate_advantages, rollout, run, warm_start
from bnpo.demo.task import EOS, MARK, PAD, SEP, FormatTask


def test_accuracy_and_format_by_hand():
    task = FormatTask(min_digits=1, max_digits=3)
    prompts = torch.tensor([[PAD, 1, 2, SEP]] * 4)
    responses = torch.tensor([
        [MARK, 2, 1, EOS, 0],  # formatted and right
        [2, 1, EOS, 7, 7],  # right, no marker
        [MARK, 2, 2, EOS, 0],  # formatted, wrong
        [MARK, MARK, 2, 1, EOS],  # two markers: the answer after the first is wrong
    ])
    parts = task.reward_components(prompts, responses)
    assert parts["acc"].tolist() == [1.0, 1.0, 0.0, 0.0] and parts["format"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert task.reward(prompts, responses).tolist() == [2.0, 1.0, 1.0, 1.0]
    target, _ = task.targets(prompts)
    assert task.reward(prompts, torch.cat([target, torch.zeros(4, 0, dtype=torch.long)], 1)).eq(2).all()


def test_the_warm_start_sees_the_marker_in_a_share_of_its_answers():
    task = FormatTask(min_digits=1, max_digits=6, format_rate=0.3)
    prompts = task.sample_prompts(4000, torch.Generator().manual_seed(0))
    target, counted = task.supervised_targets(prompts, torch.Generator().manual_seed(1))
    marked = (target[:, 0] == MARK).double().mean().item()
    assert marked == pytest.approx(0.3, abs=0.03)
    parts = task.reward_components(prompts, target)
    assert parts["acc"].eq(1).all() and parts["format"].mean().item() == pytest.approx(marked)
    assert counted.sum(1).eq((prompts[:, :-1] != PAD).sum(1) + 1 + (target[:, 0] == MARK).long()).all()


def test_ad_bnpo_through_verl_is_bnpo_s_decomposition_of_the_components():
    s = Settings(task_variant="format", prompts_per_step=8, warm_start_steps=30)
    model = s.policy(0)
    model.load_state_dict(warm_start(s, 0))
    generator = torch.Generator().manual_seed(0)
    batch = rollout(s, model, s.task.sample_prompts(8, generator), generator)
    reward = batch.batch["token_level_rewards"].sum(1)
    parts = {key: torch.tensor(batch.non_tensor_batch[key]) for key in ("acc", "format")}
    assert torch.equal(reward, parts["acc"] + parts["format"])
    assert 0 < parts["format"].mean() < 1  # the warm start formats some answers, not all
    scored, stats = estimate_advantages(ESTIMATORS["ad_bnpo"], batch)
    expected, _, _ = compute_ad_bnpo_advantage(
        parts, batch.batch["response_mask"], batch.non_tensor_batch["uid"], BNPOConfig(components=("acc", "format")))
    torch.testing.assert_close(scored.batch["advantages"], expected)
    assert set(stats.components) == {"acc", "format"}
    summed, _ = estimate_advantages(ESTIMATORS["bnpo_sum"], batch)
    assert not torch.allclose(summed.batch["advantages"], expected)


def test_ad_bnpo_needs_the_format_variant_and_the_cli_defaults():
    with pytest.raises(ValueError, match="only the format variant has"):
        run(Settings(estimators=("ad_bnpo",), steps=2), show_progress=False)
    settings, out, _ = parse_args(["--quick"], FORMAT, "python -m bnpo.demo format", "bnpo_format_out")
    assert settings.task_variant == "format" and settings.estimators == ("ad_bnpo", "bnpo_sum", "grpo")
    assert out == Path("bnpo_format_out") and settings.steps == 40 and settings.eval_every == 25


@pytest.mark.slow  # about half a minute
def test_a_short_format_run_writes_rates_per_seed(tmp_path):
    out = tmp_path / "out"
    stdout = run_demo("format", "--quick", "--seeds", "2", "--steps", "6", "--out", str(out), cwd=tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    for name in ("ad_bnpo", "bnpo_sum", "grpo"):
        e = summary["estimators"][name]
        for key in ("initial_acc", "final_acc", "initial_format", "final_format"):
            values = [v[key] for v in e["per_seed"].values()]
            assert len(values) == 2 and 0 <= min(values) and max(values) <= 1 and e[key] == pytest.approx(np.mean(values))
        assert [ev["step"] for ev in e["evals"]["0"]] == [0, 6]
    assert (out / "format.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.md").read_text().splitlines()[0] in stdout
    assert summary["machine"]["portable"] is False and summary["machine"]["cpu"]
    assert (out / "table.md").read_text().splitlines()[-1] == (
        f"Machine: {summary['machine']['cpu']}, {summary['machine']['cpus']} CPUs, torch {summary['machine']['torch']}, "
        f"native ({summary['machine']['cpu_capability']} kernels).")


def test_late_accuracy_and_paired_differences():
    from bnpo.demo.format_report import late_accuracy, paired_differences

    evals = [{"step": 0, "acc": 0.1}, {"step": 50, "acc": 0.5}, {"step": 100, "acc": 0.7}, {"step": 200, "acc": 0.9}]
    assert late_accuracy(evals) == pytest.approx(0.8)  # the evaluations at steps 100 and 200
    summary = {"estimators": {name: {"per_seed": {"0": {"final_acc": acc}, "1": {"final_acc": acc + 0.1}}}
                              for name, acc in (("a", 0.5), ("b", 0.7))}}
    differences = paired_differences(summary, lambda e, seed: e["per_seed"][seed]["final_acc"], "b")
    assert differences == {"a": [pytest.approx(-0.2), pytest.approx(-0.2)]}
