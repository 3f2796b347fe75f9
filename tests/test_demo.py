"""The CPU demo (``python -m bnpo.demo``): verl's trainer on this CPU, once per estimator and seed.

Fast tests check each piece against the verl code it feeds: the reward as verl's reward loop calls it, the prompt
tokens as verl's agent loop builds them, the config as verl composes and validates it, the replay buffer verl
builds from it. The slow test runs the demo's ``--quick`` mode as a user would, with a sign-flipped BNPO
registered through verl's external-module mechanism as the control: BNPO must gain held-out accuracy, the
flipped estimator must not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnpo.demo.__main__ import QUICK, parse_args
from bnpo.demo.launcher import DemoError, check_estimators, require_cpu_port, split_log, write_data
from bnpo.demo.plan import VARIANTS, DemoSettings, Paths, overrides, val_metric
from bnpo.demo.reversal import PolicySize, ReversalTask, build_tokenizer
from bnpo.demo.reward import compute_score, compute_score_format
from bnpo.demo.session import MARK
from bnpo.demo.warm_start import (WarmStart, answer_ids, prompt_ids, supervised_batch, warm_start,
                                  warm_start_questions)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _cpu_port_missing() -> bool:
    try:  # an import hook may refuse the name outright rather than not find it
        return importlib.util.find_spec("bnpo_cpu_e2e") is None or importlib.util.find_spec("vllm") is None
    except ImportError:
        return True


needs_cpu_port = pytest.mark.skipif(
    _cpu_port_missing(), reason="the CPU end-to-end port is not installed (bash scripts/install_cpu_e2e.sh)"
)


# ----------------------------------------------------------------------------------------- task and reward


def test_reward_is_exact_match_of_the_reversed_digits():
    assert compute_score("src", "4 1 3", "4 1 3") == 1.0
    assert compute_score("src", " 4  1 3 ", "4 1 3") == 1.0  # how the words are spaced does not matter
    for wrong in ("4 1", "4 1 3 3", "3 1 4", "", "reverse 4 1 3"):
        assert compute_score("src", wrong, "4 1 3") == 0.0, wrong


def test_the_format_reward_splits_accuracy_from_form():
    assert compute_score_format("src", "4 1 3", "4 1 3") == {"score": 2.0, "acc": 1.0, "format": 1.0}
    assert compute_score_format("src", "answer 4 1 3", "4 1 3") == {"score": 1.0, "acc": 1.0, "format": 0.0}
    assert compute_score_format("src", "3 1 4", "4 1 3") == {"score": 1.0, "acc": 0.0, "format": 1.0}
    for neither in ("answer 3 1 4", "4 1 3 3", "4 1", "", "reverse"):  # a run-on or short answer is neither
        assert compute_score_format("src", neither, "4 1 3") == {"score": 0.0, "acc": 0.0, "format": 0.0}, neither


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_held_out_questions_are_disjoint_from_training_and_the_warm_start(tmp_path, variant):
    """What the demo writes: no held-out question equals a training or warm-start question (as digit strings),
    none is a palindrome (the warm start's copy habit answers those), none repeats."""
    import pandas as pd

    s, paths = DemoSettings(variant=variant), Paths(tmp_path)
    write_data(s, paths)
    digits = lambda frame: ["".join(row[0]["content"].split()[1:]) for row in frame["prompt"]]  # noqa: E731
    train, val = digits(pd.read_parquet(paths.train_file)), digits(pd.read_parquet(paths.val_file))
    warm = ["".join(q) for q in warm_start_questions(s.task, s.spec.warm_start)]
    assert len(val) == s.val_questions and len(set(val)) == len(val)
    assert not set(val) & set(train) and not set(val) & set(warm)
    assert not [q for q in val if q == q[::-1]]
    assert {len(q) for q in val} == set(range(2, s.task.max_digits + 1))
    assert {len(q) for q in train} == set(range(1, s.task.max_digits + 1))  # training keeps every length
    assert pd.read_parquet(paths.val_file)["data_source"].unique().tolist() == [s.spec.data_source]


def test_rows_are_verl_rows_with_reproducible_questions():
    task = ReversalTask(min_digits=2, max_digits=5)
    rows = task.rows(300, seed=3, split="train")
    assert rows == task.rows(300, seed=3, split="train") and rows != task.rows(300, seed=4, split="train")
    lengths = {row["extra_info"]["num_digits"] for row in rows}
    assert lengths == {2, 3, 4, 5}
    for row in rows:
        digits = row["prompt"][0]["content"].split()[1:]
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("reverse ")
        assert row["reward_model"]["ground_truth"] == " ".join(reversed(digits))
        assert compute_score(row["data_source"], row["reward_model"]["ground_truth"], row["reward_model"]["ground_truth"])


def test_prompt_tokens_are_the_ones_verls_agent_loop_builds():
    """The warm start trains on the ids verl's agent loop renders (its Continuous Token builder, Llama's family)."""
    import inspect

    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    task, tokenizer = ReversalTask(), build_tokenizer()
    # the builder as verl's agent loop asks for it: 0.9.1 by the model's HF type; 0.9.0 (where the builder is
    # opt-in, data.continuous_token) by its configured family, "auto" by default
    if "hf_model_type" in inspect.signature(create_continuous_token_builder).parameters:
        builder = create_continuous_token_builder(tokenizer, hf_model_type="llama")
    else:
        builder = create_continuous_token_builder(tokenizer, model_family="auto")
    for digits in task.questions(20, seed=0):
        messages = [{"role": "user", "content": task.prompt_text(digits)}]
        assert builder.build_initial_tokens(messages) == prompt_ids(tokenizer, task, digits)
        assert len(prompt_ids(tokenizer, task, digits)) <= task.max_prompt_tokens
        answer = answer_ids(tokenizer, task, digits)
        assert len(answer) <= task.max_response_tokens and answer[-1] == tokenizer.eos_token_id
        # what verl's reward loop decodes from a correct answer scores 1
        text = tokenizer.decode(answer, skip_special_tokens=True)
        assert compute_score("src", text, task.answer_text(digits)) == 1.0


def test_the_warm_start_learns_only_the_answers_and_saves_what_verl_loads(tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    task, tokenizer = ReversalTask(max_digits=3), build_tokenizer()
    input_ids, attention_mask, labels = supervised_batch(tokenizer, task, [["1"], ["1", "2", "3"]])
    counted = (labels != -100).sum(1).tolist()
    assert counted == [2, 4]  # each answer's digits and its EOS, nothing of the prompt
    assert attention_mask.sum(1).tolist() == [len(prompt_ids(tokenizer, task, q)) + n for q, n in ((["1"], 2), (["1", "2", "3"], 4))]
    info = warm_start(task, PolicySize(), WarmStart(steps=30, batch_size=32), tmp_path / "model")
    assert info["loss_last"] < info["loss_first"]
    model = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert loaded.eos_token == "<|end|>" and model.config.head_dim == 32  # vLLM's CPU attention takes 32
    assert loaded.apply_chat_template([{"role": "user", "content": "reverse 1"}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False) == prompt_ids(tokenizer, task, ["1"])
    assert torch.isfinite(model(input_ids=input_ids, attention_mask=attention_mask).logits).all()


# ------------------------------------------------------------------------------------------ command line


def test_cli_defaults_and_options():
    settings, out, progress = parse_args([])
    assert settings == DemoSettings() and out == Path("bnpo_demo_out") and progress
    assert settings.estimators == ("bnpo", "grpo", "rloo") and settings.seeds == (0, 1)
    settings, out, progress = parse_args(["--quick", "--estimators", "bnpo, reinforce_plus_plus,bnpo", "--out", "x",
                                          "--no-progress", "+algorithm.bnpo.max_weight=100"])
    assert settings.steps == QUICK["steps"] and settings.seeds == QUICK["seeds"] and not progress
    assert settings.estimators == ("bnpo", "reinforce_plus_plus") and out == Path("x")
    assert settings.extra_overrides == ("+algorithm.bnpo.max_weight=100",)
    assert [r["name"] for r in parse_args(["--seeds", "2", "--estimators", "bnpo,grpo"])[0].runs] == [
        "bnpo-seed0", "grpo-seed0", "bnpo-seed1", "grpo-seed1"]
    settings = parse_args(["--task", "reverse_format"])[0]
    assert settings.variant == "reverse_format" and settings.estimators == ("ad_bnpo", "bnpo", "grpo", "gdpo_v1")
    for bad in (["--seeds", "0"], ["--steps", "0"], ["--estimators", ","], ["format"], ["--test-freq", "0"],
                ["--task", "format"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_unknown_estimators_are_refused_with_the_registry_and_how_to_register():
    import bnpo.verl.plugin  # noqa: F401  (what verl's entry point loads in every process)

    check_estimators(("bnpo", "grpo", "rloo", "reinforce_plus_plus"))
    with pytest.raises(DemoError, match=r"bnpoo not in verl's estimator registry.*Registered: .*grpo.*"
                                        r"VERL_USE_EXTERNAL_MODULES"):
        check_estimators(("bnpo", "bnpoo"))
    with pytest.raises(DemoError, match="GAE needs a critic"):
        check_estimators(("gae",))
    check_estimators(("gdpo_v1",))  # the demo registers it
    with pytest.raises(DemoError, match="does not hand gdpo the reward components.*use gdpo_v1"):
        check_estimators(("gdpo",))


def test_a_missing_cpu_port_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bnpo_cpu_e2e" else real(name, *a))
    with pytest.raises(DemoError, match=r"bash scripts/install_cpu_e2e\.sh"):
        require_cpu_port()


def test_the_session_log_is_split_per_run(tmp_path):
    log = tmp_path / "session.log"
    log.write_text("ray starts\n"
                   f"(DemoRunner pid=1) {MARK} run bnpo-seed0 begins\nstep:1\n(DemoRunner pid=1) {MARK} run bnpo-seed0 ends (3.0 s)\n"
                   f"(DemoRunner pid=1) {MARK} run grpo-seed0 begins\nstep:1 grpo\n")
    paths = split_log(log, tmp_path)
    assert sorted(p.name for p in paths) == ["bnpo-seed0.log", "grpo-seed0.log", "startup.log"]
    assert (tmp_path / "startup.log").read_text() == "ray starts\n"
    assert "step:1\n" in (tmp_path / "bnpo-seed0.log").read_text()
    assert (tmp_path / "grpo-seed0.log").read_text().endswith("step:1 grpo\n")


@needs_cpu_port
@pytest.mark.parametrize("show_progress", [True, False])
def test_the_bar_names_verls_start_up_until_the_first_step(tmp_path, monkeypatch, capsys, show_progress):
    """The session is replaced by a child that logs nothing for a while (verl starting), then one step per run:
    the bar reads "starting verl" until the first logged step, then counts steps; without a bar nothing is printed."""
    import subprocess as sp

    import bnpo.demo.launcher as launcher

    s, paths = DemoSettings(estimators=("bnpo",), seeds=(0,), steps=2), Paths(tmp_path)
    paths.runs.mkdir(parents=True)
    log = paths.runs / "bnpo-seed0.jsonl"
    script = (f"import time, pathlib; p = pathlib.Path({str(log)!r}); time.sleep(2.5); "
              "[(p.open('a').write('{\"step\": %d, \"data\": {\"training/global_step\": %d}}\\n' % (i, i)), "
              "time.sleep(1.5)) for i in (1, 2)]")
    real = sp.Popen
    monkeypatch.setattr(launcher.subprocess, "Popen", lambda args, **kw: real([sys.executable, "-c", script], **kw))
    launcher.run_session(s, paths, show_progress=show_progress)
    err = capsys.readouterr().err
    if not show_progress:
        assert err == ""
        return
    assert launcher.STARTING in err and launcher.TRAINING in err
    assert err.index(launcher.STARTING) < err.index(launcher.TRAINING) and "2/2" in err


# ------------------------------------------------------------------------------------- verl's config


@needs_cpu_port
def test_the_runs_config_is_what_verl_composes_and_accepts(tmp_path):
    """The demo's overrides, with the CPU port's, compose into verl's ppo_trainer config and pass verl's checks."""
    from bnpo_cpu_e2e.launch import CPU_OVERRIDES
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from bnpo.demo.session import compose

    s = DemoSettings()
    config = compose([*CPU_OVERRIDES, *overrides(s, Paths(tmp_path), "bnpo")])
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert config.algorithm.adv_estimator == "bnpo" and not need_critic(config) and not need_reference_policy(config)
    assert config.actor_rollout_ref.rollout.name == "vllm" and config.trainer.use_v1
    assert config.data.train_batch_size == s.prompts_per_step and config.actor_rollout_ref.rollout.n == s.rollout_n
    assert config.trainer.total_training_steps == s.steps and config.trainer.val_before_train
    # greedy validation: one deterministic answer per question, so every run's step-0 accuracy is the same
    assert config.actor_rollout_ref.rollout.val_kwargs.do_sample is False and config.actor_rollout_ref.rollout.val_kwargs.n == 1
    assert config.reward.custom_reward_function.path == "pkg://bnpo.demo.reward"
    assert val_metric(s) == "val-core/bnpo_demo/reverse_digits/acc/mean@1"


@needs_cpu_port
@pytest.mark.parametrize("estimator", VARIANTS["reverse_format"].estimators)
def test_each_two_reward_run_gets_the_keys_its_estimator_needs_and_verl_and_bnpo_accept_them(tmp_path, estimator):
    from bnpo_cpu_e2e.launch import CPU_OVERRIDES

    from bnpo.demo import gdpo  # noqa: F401 -- the session registers gdpo_v1 before checking
    from bnpo.demo.session import checked_config

    s = DemoSettings(variant="reverse_format", estimators=VARIANTS["reverse_format"].estimators)
    config = checked_config([*CPU_OVERRIDES, *overrides(s, Paths(tmp_path), estimator)])
    assert config.algorithm.adv_estimator == estimator
    assert config.reward.custom_reward_function.name == "compute_score_format"
    bnpo_block = config.algorithm.get("bnpo") or {}
    assert (list(bnpo_block.get("components") or []) == ["acc", "format"]) == (estimator == "ad_bnpo")
    assert (bnpo_block.get("reward_max") == 2) == (estimator == "bnpo")
    assert (list(config.algorithm.get("gdpo_reward_keys") or []) == ["acc", "format"]) == (estimator == "gdpo_v1")
    assert val_metric(s) == "val-core/bnpo_demo/reverse_format/acc/mean@1"


def test_verls_gdpo_fails_on_the_batch_verls_v1_trainer_builds():
    """Why the demo has gdpo_v1: verl's v1 ``_compute_advantage`` hands ``compute_advantage_for_multi_trajectories``
    a DataProto of ``uid``, ``response_mask`` and the scores (nothing of the reward's components nor the prompts);
    verl's gdpo then stops. If verl starts handing it what it needs, this fails and the demo can run verl's gdpo."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    bs, length = 8, 4
    data = DataProto.from_dict(
        tensors={"response_mask": torch.ones(bs, length, dtype=torch.long), "token_level_rewards": torch.rand(bs, length),
                 "token_level_scores": torch.rand(bs, length)},
        non_tensors={"uid": np.array([f"q{i // 4}" for i in range(bs)], dtype=object)},
    )
    keys = [f"q{i // 4}_{i}_0" for i in range(bs)]
    config = OmegaConf.create({"gdpo_reward_keys": ["acc", "format"]})
    with pytest.raises(KeyError, match="prompts"):
        compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator="gdpo", num_repeat=4, config=config)


def test_gdpo_v1_is_verls_gdpo_on_the_components_the_scope_hands_it():
    """gdpo_v1 equals verl's compute_gdpo_outcome_advantage called as verl's legacy trainer calls it (prompts,
    attention_mask and the components in non_tensor_batch), on a batch with left-padded prompts and right-padded
    responses of different lengths."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage

    from bnpo.demo.gdpo import compute_gdpo_v1_advantage
    from bnpo.verl.context import estimator_scope

    g = torch.Generator().manual_seed(0)
    bs, prompt_len, resp_len = 24, 5, 7
    index = np.array([f"q{i // 6}" for i in range(bs)], dtype=object)
    lengths = torch.randint(1, resp_len + 1, (bs,), generator=g)
    response_mask = (torch.arange(resp_len)[None] < lengths[:, None]).float()
    prompt_mask = (torch.arange(prompt_len)[None] >= torch.randint(0, 3, (bs,), generator=g)[:, None]).float()
    acc = (torch.rand(bs, generator=g) < 0.3).float().numpy().astype(object)
    fmt = (torch.rand(bs, generator=g) < 0.7).float().numpy().astype(object)
    score = torch.zeros(bs, resp_len)
    score[torch.arange(bs), lengths - 1] = torch.tensor((acc + fmt).astype(float), dtype=torch.float32)
    config = OmegaConf.create({"gdpo_reward_keys": ["acc", "format"], "gdpo_reward_weights": [1.0, 0.5]})
    expected, _ = compute_gdpo_outcome_advantage(
        score, response_mask, index, config=config, non_tensor_batch={"acc": acc, "format": fmt, "uid": index},
        batch={"prompts": torch.zeros(bs, prompt_len), "attention_mask": torch.cat([prompt_mask, response_mask], 1).long()},
    )
    with estimator_scope(fields={"acc": acc, "format": fmt}):
        got, returns = compute_gdpo_v1_advantage(score, response_mask, index, config=config)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got, returns) and got.abs().sum() > 0
    with pytest.raises(ValueError, match=r"gdpo_v1 needs algorithm.gdpo_reward_keys.*missing: \['format'\]"):
        with estimator_scope(fields={"acc": acc}):
            compute_gdpo_v1_advantage(score, response_mask, index, config=config)


@needs_cpu_port
@pytest.mark.parametrize("override, named", [
    ("+algorithm.bnpo.fixed_alpha=0.5", "algorithm.bnpo.fixed_alpha"),  # bnpo's start-up check
    ("data.train_batch_size=7", "train_batch_size"),  # verl's own validate_config
])
def test_a_config_verl_or_bnpo_refuses_stops_the_demo_before_the_warm_start(tmp_path, override, named):
    from bnpo.demo.launcher import run

    settings = parse_args(["--quick", "--estimators", "bnpo", override])[0]
    with pytest.raises(DemoError, match=rf"verl refused the config of run bnpo-seed0: .*{named}"):
        run(settings, tmp_path / "out", show_progress=False)
    assert not Paths(tmp_path / "out").model.exists()  # nothing was trained


# --------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """``python -m bnpo.demo --quick`` with BNPO and a sign-flipped BNPO (registered through VERL_USE_EXTERNAL_MODULES)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "flipped_estimator", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "bnpo.demo", "--quick", "--estimators", "bnpo,bnpo_flipped", "--out", str(out),
         "--no-progress"],
        cwd=tmp_path_factory.getbasetemp(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=20 * 60,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "held-out acc, step 0" in proc.stdout  # the table
    (out.parent / "console.txt").write_text(proc.stdout)
    return out


@needs_cpu_port
@pytest.mark.slow  # one verl session, two runs of the quick mode: about 4 minutes on 2 idle cores
def test_bnpo_learns_through_verls_trainer_and_the_flipped_sign_does_not(quick_run: Path):
    summary = json.loads((quick_run / "summary.json").read_text())
    acc = summary["comparison"]["acc"][str(QUICK["steps"])]
    assert 0.1 < acc["start"] < 0.9  # the warm start leaves room to learn, and something to learn from
    bnpo, flipped = acc["gains"]["bnpo"], acc["gains"]["bnpo_flipped"]
    assert bnpo["mean"] >= 0.03 and bnpo["separable"], acc
    assert flipped["mean"] <= 0.0, acc  # the control fails
    assert acc["differences"]["bnpo - bnpo_flipped"]["low"] > 0, acc  # and is separable from bnpo


@needs_cpu_port
@pytest.mark.slow
def test_the_quick_run_records_verls_metrics_and_the_machine(quick_run: Path):
    summary = json.loads((quick_run / "summary.json").read_text())
    for name in ("bnpo-seed0", "bnpo_flipped-seed0"):
        run = summary["runs"][name]
        assert run["steps"] == list(range(1, QUICK["steps"] + 1))
        assert [v["step"] for v in run["val"]] == [0, 5, 10] and run["wall_s"] > 0
        assert len(run["train_reward"]) == QUICK["steps"]
        assert len(run["advantage_rms"]) == QUICK["steps"] and max(run["advantage_rms"]) > 0
        # verl's per-question validation dumps: every held-out question at every validation
        assert sorted(run["validations"], key=int) == ["0", "5", "10"]
        assert all(len(v["acc"]) == summary["settings"]["val_questions"] for v in run["validations"].values())
        assert {"timing_s/gen", "timing_s/update_actor", "timing_s/step"} <= set(run["median_timing_s"])
        assert (quick_run / "logs" / f"{name}.log").read_text().count(MARK) >= 2
    bnpo = summary["runs"]["bnpo-seed0"]["bnpo"]
    assert {"bnpo/alpha", "bnpo/beta", "bnpo/a", "bnpo/b"} <= set(bnpo)
    assert all(a >= 1.0 for a in bnpo["bnpo/alpha"]) and len(bnpo["bnpo/alpha"]) == QUICK["steps"]
    assert summary["runs"]["bnpo_flipped-seed0"]["bnpo"] == {}  # bnpo's statistics belong to its own estimator
    assert "vLLM" in (quick_run / "logs" / "startup.log").read_text()  # verl's vLLM rollout started
    table = (quick_run / "table.md").read_text()
    assert summary["machine"]["cpu"] in table and "verl 0." in table and "95% CI" in table
    assert "| acc: bnpo - bnpo_flipped |" in table and "grad-norm CV" not in table
    assert (quick_run / "curves.png").stat().st_size > 10_000
    # --summarize-only rebuilds the same summary from the run's verl outputs, training nothing
    from bnpo.demo.launcher import resummarize

    settings = parse_args(["--quick", "--estimators", "bnpo,bnpo_flipped"])[0]
    again, _ = resummarize(settings, quick_run)
    assert json.loads(json.dumps(again)) == summary
    console = (quick_run.parent / "console.txt").read_text()
    for verl_says in ("validate_config", "WARNING", "Ray", "vLLM"):  # on the console only the table and the files
        assert verl_says not in console, console[:3000]
    assert "validate_config" in (quick_run / "logs" / "checks.log").read_text()


@needs_cpu_port
@pytest.mark.slow  # one verl session, two runs of the two-reward task's quick mode: about 4 minutes on 2 idle cores
def test_ad_bnpo_improves_both_rewards_and_gdpo_runs_in_verls_v1_trainer(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bnpo.demo", "--task", "reverse_format", "--quick", "--estimators", "ad_bnpo,gdpo_v1",
         "--out", str(out), "--no-progress"],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=20 * 60,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["components"] == ["acc", "format", "both"]
    final = summary["comparison"]
    for component in ("acc", "format"):  # AD-BNPO improves both components over the warm start
        point = final[component][str(QUICK["steps"])]
        assert 0.0 < point["start"] < 0.9, (component, point)
        assert point["gains"]["ad_bnpo"]["mean"] > 0, (component, point)
    # the warm start: format mostly learned, accuracy lower
    assert final["format"][str(QUICK["steps"])]["start"] > final["acc"][str(QUICK["steps"])]["start"]
    assert {"bnpo/acc/alpha", "bnpo/format/alpha"} <= set(summary["runs"]["ad_bnpo-seed0"]["bnpo"])  # a fit each
    gdpo = summary["runs"]["gdpo_v1-seed0"]
    assert len(gdpo["advantage_rms"]) == QUICK["steps"] and max(gdpo["advantage_rms"]) > 0  # 0 where every group is solved
    assert "| format: ad_bnpo - gdpo_v1 |" in (out / "table.md").read_text()
