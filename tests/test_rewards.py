"""bnpo.rewards: accuracy via math-verify, the R1 format rule, bounded time, and its use by verl
(loaded by verl's own loader from the recipe config, called by verl's reward manager, consumed by
the registered ad_bnpo estimator)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("math_verify")

from bnpo import rewards  # noqa: E402
from bnpo.rewards import compute_score, r1_format_score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# an answer math-verify needs seconds to give up on (its comparison of a huge power tower)
SLOW = "so the answer is \\boxed{9^{9^{9}}}"


def acc(solution: str, gold: str, **kw) -> float:
    return compute_score("test", solution, gold, **kw)["acc"]


@pytest.mark.parametrize(
    "solution, gold",
    [
        ("The answer is $\\boxed{0.5}$.", "\\frac{1}{2}"),
        ("so $\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}"),
        ("so $\\boxed{\\frac12}$", "0.5"),
        ("it is \\boxed{5\\text{ cm}}", "5"),
        ("final: \\boxed{(-1, 1)}", "(-1,1)"),
        ("final: \\boxed{[2, \\infty)}", "[2,\\infty)"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("the roots are \\boxed{\\{2, 1\\}}", "\\{1, 2\\}"),
        ("so \\boxed{1234}", "1234"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ],
)
def test_equivalent_forms_score_1(solution, gold):
    result = compute_score("test", solution, gold)
    assert result["acc"] == 1.0 and result["score"] == 1.0
    assert result["pred"]


@pytest.mark.parametrize(
    "solution, gold",
    [
        ("\\boxed{3}", "2"),
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{(-1, 1]}", "(-1,1)"),  # half-open is not open
        ("\\boxed{x + 1}", "x - 1"),
    ],
)
def test_wrong_answers_score_0(solution, gold):
    result = compute_score("test", solution, gold)
    assert (result["acc"], result["score"]) == (0.0, 0.0)
    assert result["pred"]  # an answer was found, it is just wrong


@pytest.mark.parametrize(
    "solution",
    ["", None, "}}}{{\\boxed{", "\\boxed{}", "\x00\xff" * 50, "\\frac{\\frac{\\frac{", 12345, b"\\boxed{2}"[:4]],
)
def test_garbage_and_empty_never_raise(solution):
    result = compute_score("test", solution, "2")
    assert set(result) == {"score", "acc", "pred"}
    assert result["acc"] == 0.0 and result["score"] == 0.0


def test_bad_ground_truth_is_a_zero_not_an_error():
    for gold in (None, "", [], {"x": 1}):
        assert compute_score("test", "\\boxed{2}", gold)["acc"] == 0.0
    assert compute_score("test", "\\boxed{27}", 27.0)["acc"] == 1.0  # numbers as stored by amc23


def test_only_the_tail_is_read():
    answer_then_chatter = "\\boxed{7} " + "and some more words. " * 40
    assert len(answer_then_chatter) > rewards.DEFAULT_TAIL_CHARS
    assert acc(answer_then_chatter, "7") == 0.0
    assert acc(answer_then_chatter, "7", tail_chars=0) == 1.0  # 0: the whole output


def test_last_answer_wins():
    assert acc("first $\\boxed{3}$, corrected: $\\boxed{4}$", "4") == 1.0
    assert acc("first $\\boxed{4}$, corrected: $\\boxed{3}$", "4") == 0.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>reasoning</think><answer>\\boxed{2}</answer>", 1.0),
        ("  <think>a\nb</think>\n<answer>2</answer>\n", 1.0),
        ("<think>a</think>", 0.0),
        ("<answer>2</answer>", 0.0),
        ("<answer>2</answer><think>a</think>", 0.0),
        ("<think>a</think><answer>2</answer> trailing text", 0.0),
        ("preamble <think>a</think><answer>2</answer>", 0.0),
        ("<think>a</think> between <answer>2</answer>", 0.0),
        ("<think>a<think>b</think><answer>2</answer>", 0.0),
        ("<think>a</think><answer>2</answer></answer>", 0.0),
        ("<think><answer>2</answer></think>", 0.0),
        ("", 0.0),
    ],
)
def test_r1_format_rule(text, expected):
    assert r1_format_score(text) == expected


def test_format_reward_switch():
    text = "<think>1/2 is a half</think><answer>\\boxed{\\frac{1}{2}}</answer>"
    assert "format" not in compute_score("test", text, "0.5")
    on = compute_score("test", text, "0.5", format_reward=True)
    assert (on["acc"], on["format"], on["score"]) == (1.0, 1.0, 1.0)
    wrong_answer = compute_score("test", text, "0.25", format_reward=True)
    assert (wrong_answer["acc"], wrong_answer["format"], wrong_answer["score"]) == (0.0, 1.0, 0.5)
    no_tags = compute_score("test", "\\boxed{0.5}", "0.5", format_reward=True)
    assert (no_tags["acc"], no_tags["format"], no_tags["score"]) == (1.0, 0.0, 0.5)
    garbage = compute_score("test", None, None, format_reward=True)
    assert garbage == {"score": 0.0, "acc": 0.0, "pred": "", "format": 0.0}


def test_overrunning_check_is_cut_off_and_the_worker_replaced():
    timeouts = rewards._POOL.timeouts
    start = time.monotonic()
    result = compute_score("test", SLOW, "1", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert result["acc"] == 0.0
    assert rewards._POOL.timeouts == timeouts + 1
    assert elapsed < 0.5 + 5.0  # the deadline, plus generous slack for a loaded machine
    # the next call gets a fresh worker and a correct answer
    assert acc("\\boxed{\\frac{1}{2}}", "0.5") == 1.0


def test_calls_from_threads_are_bounded_and_correct():
    """verl calls reward functions from executor threads: no signal-based timeout can work there."""
    cases = [("\\boxed{0.5}", "\\frac12", 1.0), (SLOW, "1", 0.0), ("\\boxed{3}", "4", 0.0),
             ("\\boxed{(1,2)}", "(1,2)", 1.0)] * 3
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda c: compute_score("test", c[0], c[1], timeout_s=1.0), cases))
    assert [r["acc"] for r in results] == [c[2] for c in cases]
    # 3 slow cases of at most 1 s each + start-ups; far less than 3 x math-verify's own 2 x 5 s
    assert time.monotonic() - start < 60


# ----------------------------------------------------------------------------------------------
# with verl's real code
# ----------------------------------------------------------------------------------------------


def _recipe_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "recipe/bnpo/config"), version_base=None):
        return compose(config_name="bnpo_trainer", overrides=list(overrides))


class _ByteTokenizer:
    """The one tokenizer method verl's reward manager calls; bytes stand in for token ids."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode("utf-8", "replace")


def _reward_manager_scores(cfg, outputs: list[str], gold: str) -> list[dict]:
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(cfg)

    async def score_all():
        manager = NaiveRewardManager(cfg, _ByteTokenizer(), fn)
        results = []
        for text in outputs:
            ids = torch.tensor([list(text.encode())])
            prompt_mask = torch.ones(1, 3, dtype=torch.long)
            data = DataProto.from_dict(
                tensors={"responses": ids, "attention_mask": torch.cat([prompt_mask, torch.ones_like(ids)], 1)},
                non_tensors={
                    "data_source": np.array(["HuggingFaceH4/MATH-500"], dtype=object),
                    "reward_model": np.array([{"style": "rule", "ground_truth": gold}], dtype=object),
                    "extra_info": np.array([{"split": "test", "index": 0}], dtype=object),
                },
            )
            results.append(await manager.run_single(data))
        return results

    return asyncio.run(score_all())


@pytest.mark.parametrize("path", ["pkg://bnpo.rewards", str(ROOT / "bnpo/rewards.py")])
def test_verl_loads_it_from_the_recipe_and_passes_reward_kwargs(path):
    cfg = _recipe_config(f"reward.custom_reward_function.path={path}",
                         "reward.custom_reward_function.reward_kwargs.format_reward=true")
    outputs = ["<think>half</think><answer>\\boxed{\\frac{1}{2}}</answer>", "\\boxed{0.5}", "no idea"]
    results = _reward_manager_scores(cfg, outputs, "0.5")
    infos = [r["reward_extra_info"] for r in results]
    assert [i["acc"] for i in infos] == [1.0, 1.0, 0.0]
    assert [i["format"] for i in infos] == [1.0, 0.0, 0.0]
    assert [r["reward_score"] for r in results] == [1.0, 0.5, 0.0]


def test_default_recipe_scores_accuracy_only():
    results = _reward_manager_scores(_recipe_config(), ["\\boxed{\\dfrac{1}{2}}"], "0.5")
    assert results[0]["reward_score"] == 1.0
    assert "format" not in results[0]["reward_extra_info"]


def test_acc_and_format_feed_ad_bnpo():
    """The reward dict's keys, gathered per sample as verl does, are ad_bnpo's components."""
    import verl  # noqa: F401  (registers the estimators)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    cfg = _recipe_config("algorithm.adv_estimator=ad_bnpo", "algorithm.bnpo.components=[acc,format]")
    outputs = {
        "q1": ["<think>a</think><answer>\\boxed{2}</answer>", "\\boxed{2}", "<think>a</think><answer>3</answer>", "x"],
        "q2": ["<think>b</think><answer>\\boxed{5}</answer>", "\\boxed{4}", "\\boxed{5}", "<think>b</think><answer>5</answer>"],
    }
    gold = {"q1": "2", "q2": "5"}
    uids, infos = [], []
    for q, texts in outputs.items():
        for text in texts:
            uids.append(q)
            infos.append(compute_score("test", text, gold[q], format_reward=True))
    non_tensor_batch = {key: np.array([i[key] for i in infos]) for key in ("acc", "format")}
    bs, length = len(uids), 5
    mask = torch.ones(bs, length)
    adv, ret = get_adv_estimator_fn("ad_bnpo")(
        token_level_rewards=torch.zeros(bs, length), response_mask=mask, index=np.array(uids),
        config=cfg.algorithm, non_tensor_batch=non_tensor_batch,
    )
    assert torch.isfinite(adv).all() and torch.equal(adv, ret)
    per_sample = adv[:, 0]
    # right and well-formed beats right-only beats neither, within each question
    assert per_sample[0] > per_sample[1] > per_sample[3]
    assert per_sample[4] > per_sample[6] > per_sample[5]


@pytest.mark.skipif(not (SHARED_DATA / "math500_test.jsonl").exists(), reason="needs ../shared/data")
def test_gold_answers_of_math500_verify_against_themselves():
    rows = [json.loads(line) for line in (SHARED_DATA / "math500_test.jsonl").open()][:60]
    scores = [compute_score("HuggingFaceH4/MATH-500", f"so the answer is $\\boxed{{{r['answer']}}}$", r["answer"])
              for r in rows]
    hit = sum(s["acc"] for s in scores) / len(scores)
    assert hit >= 0.95, [r["answer"] for r, s in zip(rows, scores) if not s["acc"]]
