"""data_preprocess/: the six converters on small fixtures in each dataset's real field layout,
the shared answer extraction, bad rows, atomic writes, and (when ../shared/data exists) real sets."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRE = ROOT / "data_preprocess"
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"

sys.path.insert(0, str(PRE))  # the scripts import their helper as a sibling module
import preprocess_utils as pu  # noqa: E402

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def spec_of(name: str) -> pu.DatasetSpec:
    module_spec = importlib.util.spec_from_file_location(f"bnpo_pre_{name}", PRE / f"{name}.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SPEC


def read_parquet(path) -> list[dict]:
    # the way verl's RLHFDataset reads its files
    return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))


# script -> {output stem: expected ground truths}, from the fixtures
EXPECTED = {
    "math_lighteval": {"train": ["\\frac{1}{2}", "2", "\\{1, 2\\}"], "test": ["5", "(-1, 1)"]},
    "math500": {"test": ["21", "\\frac{3}{4}"]},
    "amc23": {"test": ["2", "3.5"]},
    "aime24": {"test": ["24", "009"]},
    "aime25": {"test": ["9", "2025"]},
    "gsm8k": {"train": ["1234", "18"], "test": ["-2"]},
}
HUB_IDS = {
    "math_lighteval": "DigitalLearningGmbH/MATH-lighteval", "math500": "HuggingFaceH4/MATH-500",
    "amc23": "math-ai/amc23", "aime24": "math-ai/aime24", "aime25": "math-ai/aime25", "gsm8k": "openai/gsm8k",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converts_fixture_to_verl_rows(name, tmp_path):
    written = pu.run(spec_of(name), ["--local_dataset_path", str(FIXTURES / name), "--local_save_dir", str(tmp_path)])
    assert sorted(written) == sorted(EXPECTED[name])
    for stem, answers in EXPECTED[name].items():
        rows = read_parquet(tmp_path / f"{stem}.parquet")
        assert [r["reward_model"]["ground_truth"] for r in rows] == answers
        for index, row in enumerate(rows):
            assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
            assert row["data_source"] == HUB_IDS[name] and row["ability"] == "math"
            assert row["reward_model"]["style"] == "rule"
            assert row["extra_info"]["split"] == stem and row["extra_info"]["index"] == index
            system, user = row["prompt"]
            assert system == {"role": "system", "content": pu.BOXED_INSTRUCTION}
            assert user["role"] == "user" and user["content"] == row["extra_info"]["question"]
            assert user["content"]


def test_cli_and_r1_template(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(PRE / "aime25.py"), "--local_dataset_path", str(FIXTURES / "aime25"),
         "--local_save_dir", str(tmp_path), "--prompt_template", "r1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 rows" in proc.stdout
    system, user = read_parquet(tmp_path / "test.parquet")[0]["prompt"]
    assert system == {"role": "system", "content": AUTHORS_R1_PROMPT}
    assert user["role"] == "user" and user["content"] == "Find the sum of the digits of $2025$."


# the authors' prompts (changyi7231/BNPO recipe/bnpo/src/data_prepare.py), as one literal each
AUTHORS_QWEN_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
AUTHORS_R1_PROMPT = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>."  # noqa: E501


def test_prompts_are_the_authors_word_for_word():
    assert pu.BOXED_INSTRUCTION == AUTHORS_QWEN_PROMPT
    assert pu.R1_INSTRUCTION == AUTHORS_R1_PROMPT
    # both as the system turn, the question as the user turn (the authors' default prompt_type)
    for template, text in (("qwen", AUTHORS_QWEN_PROMPT), ("r1", AUTHORS_R1_PROMPT)):
        assert pu.PROMPT_TEMPLATES[template]("Q?") == [{"role": "system", "content": text},
                                                       {"role": "user", "content": "Q?"}]


def test_n_repeat_writes_repeated_files(tmp_path):
    written = pu.run(spec_of("aime25"), ["--local_dataset_path", str(FIXTURES / "aime25"),
                                         "--local_save_dir", str(tmp_path), "--n_repeat", "3"])
    assert sorted(written) == ["test", "test_repeated"]
    plain, repeated = read_parquet(written["test"]), read_parquet(written["test_repeated"])
    assert repeated == [row for row in plain for _ in range(3)]  # each row 3 times in a row
    assert sorted(pu.run(spec_of("aime25"), ["--local_dataset_path", str(FIXTURES / "aime25"),
                                             "--local_save_dir", str(tmp_path / "one")])) == ["test"]
    with pytest.raises(SystemExit):
        pu.parse_args(spec_of("aime25"), ["--n_repeat", "0"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("escaped close \\boxed{a\\}b}", "a\\}b"),
        ("spaced \\boxed {7}", "7"),
        ("framed \\fbox{8}", "8"),
        ("MATH's bare form $\\boxed 5$.", "5"),
        ("not a box: \\boxedtext{3}", None),
        ("no box here", None),
        ("unbalanced \\boxed{\\frac{1}{2}", None),
        ("empty \\boxed{}", ""),
        ("unbalanced last \\boxed{3} and \\boxed{4", "3"),
    ],
)
def test_last_boxed(text, expected):
    assert pu.last_boxed(text) == expected


def _verls_last_boxed(text: str):
    """verl's own extraction (verl/utils/reward_score/math_reward.py), as its compute_score uses it."""
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    boxed = last_boxed_only_string(text)
    try:
        return None if boxed is None else remove_boxed(boxed)
    except AssertionError:
        return AssertionError


@pytest.mark.parametrize(
    "text, verls",
    [
        # the same answer: a well-formed \boxed{...} (nested and escaped-pair braces), the bare form, no box
        ("so $\\boxed{\\frac{1}{2}}$.", "same"),
        ("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}", "same"),
        ("set \\boxed{\\{1, 2\\}}", "same"),
        ("MATH's bare form $\\boxed 5$.", "same"),
        ("empty \\boxed{}", "same"),
        ("no box here", "same"),
        ("unbalanced \\boxed{\\frac{1}{2}", "same"),
        # where verl's differs, and why ours is kept
        ("escaped close \\boxed{a\\}b}", "a\\"),  # counts the escaped brace
        ("spaced \\boxed {7}", "{7}"),  # reads "\\boxed " as the bare form
        ("\\boxed 5 then \\boxed{6}", "5 then \\boxed{6}"),  # any bare form anywhere wins over the last box
        ("framed \\fbox{8}", AssertionError),  # finds \\fbox, then remove_boxed refuses it
        ("not a box: \\boxedtext{3}", AssertionError),
        ("unbalanced last \\boxed{3} and \\boxed{4", None),  # no fall-back to the last closed box
        ("padded \\boxed{ 3 }", " 3 "),  # no strip
    ],
)
def test_last_boxed_against_verls_own_functions(text, verls):
    """verl's last_boxed_only_string + remove_boxed give ours for a well-formed box; ours stays for the rest."""
    pytest.importorskip("verl")
    ours, theirs = pu.last_boxed(text), _verls_last_boxed(text)
    if verls == "same":
        assert theirs == ours
    else:
        assert theirs == verls != ours


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_last_boxed_equals_verls_on_the_real_solutions_but_for_spaces():
    """The 530 MATH-500 and AIME 2024 solutions: verl's functions find the same answer, one with a trailing space."""
    pytest.importorskip("verl")
    texts = [json.loads(line)["solution"] for f in ("math500_test.jsonl", "aime24_test.jsonl")
             for line in (SHARED_DATA / f).open()]
    verls = [_verls_last_boxed(t) for t in texts]
    assert [pu.last_boxed(t) for t in texts] == [v.strip() if isinstance(v, str) else v for v in verls]
    assert sum(isinstance(v, str) and v != v.strip() for v in verls) == 1


def test_gsm8k_answer():
    assert pu.gsm8k_answer({"answer": "work\n#### 1,234,567"}) == "1234567"
    assert pu.gsm8k_answer({"answer": "#### -3.5"}) == "-3.5"
    with pytest.raises(pu.BadRow, match="####"):
        pu.gsm8k_answer({"answer": "no marker 12"})


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _math_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "math_src"
    _write_jsonl(folder / "train.jsonl", [
        {"problem": "p0", "solution": "\\boxed{1}", "level": "Level 1", "type": "Algebra"},
        {"problem": "p1", "solution": "no box at all", "level": "Level 1", "type": "Algebra"},
        {"problem": "p2", "solution": "\\boxed{3}", "level": "Level 1", "type": "Algebra"},
    ])
    _write_jsonl(folder / "test.jsonl", [{"problem": "q0", "solution": "\\boxed{9}", "level": "Level 1", "type": "x"}])
    return folder


def test_bad_row_is_an_error_naming_split_and_row_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"previous run")  # must survive the failed run untouched
    proc = subprocess.run(
        [sys.executable, str(PRE / "math_lighteval.py"), "--local_dataset_path", str(_math_folder(tmp_path)),
         "--local_save_dir", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    assert "split 'train' row 1" in proc.stderr and "--skip_bad_rows" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]  # no test.parquet, no temp file
    assert (out / "train.parquet").read_bytes() == b"previous run"


def test_skip_bad_rows_reports_and_keeps_source_indices(tmp_path, capsys):
    pu.run(spec_of("math_lighteval"),
           ["--local_dataset_path", str(_math_folder(tmp_path)), "--local_save_dir", str(tmp_path / "o"), "--skip_bad_rows"])
    assert "skipped 1 bad row(s) of 3 in split 'train'" in capsys.readouterr().out
    rows = read_parquet(tmp_path / "o" / "train.parquet")
    assert [r["extra_info"]["index"] for r in rows] == [0, 2]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["1", "3"]


def test_missing_question_is_a_bad_row(tmp_path):
    _write_jsonl(tmp_path / "src" / "test.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "  ", "answer": "2"}])
    with pytest.raises(pu.BadRow, match=re.escape(f"aime25: {tmp_path / 'src'}: split 'test' row 1: no question text")):
        pu.run(spec_of("aime25"), ["--local_dataset_path", str(tmp_path / "src"), "--local_save_dir", str(tmp_path / "o")])


def _cli(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PRE / script), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def _bad_file_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a bad file gets (after any progress bars): no traceback, exit status 1."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    return last


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2', r"line 2: not a complete JSON object.*repair or delete that line"),
        (b'{"problem": "a", "answer": "1"}\n{"problem": "\xff\xfe", "answer": "2"}\n', r"line 2: not UTF-8 text \(byte 0xff\); re-save the file as UTF-8"),
        (b"", r"the file is empty; point --local_dataset_path at"),
        (b"\n  \n", r"the file is empty"),
        (b'{"problem": "a", "answer": "1"}\n["b", "2"]\n', r"line 2: a JSON list, not an object"),
    ],
    ids=["truncated line", "not utf-8", "empty", "blank", "not an object"],
)
def test_bad_source_file_is_one_line_naming_file_line_and_fix(tmp_path, content, expected):
    src = tmp_path / "test.jsonl"
    src.write_bytes(content)
    line = _bad_file_error(_cli("aime25.py", "--local_dataset_path", str(src), "--local_save_dir", str(tmp_path / "o")))
    assert re.search(re.escape(str(src)) + ": " + expected, line), line
    assert not (tmp_path / "o" / "test.parquet").exists()


def test_bad_file_in_a_folder_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "test.jsonl").write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem"')
    line = _bad_file_error(_cli("aime25.py", "--local_dataset_path", str(tmp_path / "src"),
                                "--local_save_dir", str(tmp_path / "o")))
    assert f"{tmp_path / 'src' / 'test.jsonl'}: line 2: not a complete JSON object" in line


def test_unreadable_parquet_is_one_line(tmp_path):
    (tmp_path / "test.parquet").write_bytes(b"PAR1 this is not parquet")
    line = _bad_file_error(_cli("aime25.py", "--local_dataset_path", str(tmp_path / "test.parquet"),
                                "--local_save_dir", str(tmp_path / "o")))
    assert f"{tmp_path / 'test.parquet'}: not a readable parquet file (ArrowInvalid: " in line
    assert line.endswith("re-download or re-export it")


def test_save_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("a file")
    line = _bad_file_error(_cli("aime25.py", "--local_dataset_path", str(FIXTURES / "aime25"),
                                "--local_save_dir", str(tmp_path / "out")))
    assert line == f"error: --local_save_dir {tmp_path / 'out'} is a file, not a folder; give a folder path (it is created if missing)"
    line = _bad_file_error(_cli("aime25.py", "--local_dataset_path", str(FIXTURES / "aime25"),
                                "--local_save_dir", str(tmp_path / "out" / "sub")))
    assert f"--local_save_dir {tmp_path / 'out' / 'sub'}: cannot create the folder (Not a directory)" in line


def test_hub_without_network_is_one_line(tmp_path):
    line = _bad_file_error(_cli("aime25.py", "--local_save_dir", str(tmp_path), HF_DATASETS_CACHE=str(tmp_path / "c")))
    assert line.startswith("error: math-ai/aime25: could not be read (") and "--local_dataset_path" in line


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, False, None, "  "])
def test_answer_that_is_no_value_is_a_bad_row(value):
    with pytest.raises(pu.BadRow, match="field 'answer'"):
        pu.plain_answer({"answer": value}, "answer")


def test_nan_answer_in_a_file_names_the_file_and_row(tmp_path):
    src = tmp_path / "test.jsonl"
    src.write_text('{"question": "q0", "answer": 27.0}\n{"question": "q1", "answer": NaN}\n')
    line = _bad_file_error(_cli("amc23.py", "--local_dataset_path", str(src), "--local_save_dir", str(tmp_path / "o")))
    assert line == (f"error: amc23: {src}: split 'test' row 1: field 'answer' is nan (a missing value), not an answer "
                    "(fix the row, or pass --skip_bad_rows to drop such rows)")


def test_boolean_answers_are_bad_rows_not_true(tmp_path):
    rows = [{"question": "q0", "answer": True}, {"question": "q1", "answer": 3}]
    kept, skipped = pu.convert_split(spec_of("amc23"), "test", rows, "qwen", skip_bad_rows=True)
    assert skipped == 1 and [r["reward_model"]["ground_truth"] for r in kept] == ["3"]


_SLOW_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import preprocess_utils as pu
import pyarrow.parquet as pq

def slow_write(table, where, **kw):  # a write that is still going when the signal comes
    with open(where, "wb") as f:
        f.write(b"PAR1 partial")
    print("WRITING", flush=True)
    time.sleep(120)

pq.write_table = slow_write
spec = pu.DatasetSpec(name="t", hub_id="t/t", splits=("test",), question_keys=("problem",),
                      answer=((pu.plain_answer, "answer"),))
sys.argv = ["x", "--local_dataset_path", sys.argv[2], "--local_save_dir", sys.argv[3]]
pu.main(spec)
"""


def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(PRE), str(FIXTURES / "aime25"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "c")})
    try:
        assert proc.stdout.readline().strip() == "WRITING", proc.stderr.read()
        assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]  # the write is under way
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(out.iterdir()) == []


def test_temporary_file_of_a_killed_run_is_removed_by_the_next(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".tmp-{gone.pid}-abc123.parquet"  # as SIGKILL leaves it
    live = out / f".tmp-{os.getpid()}-def456.parquet"  # a run still writing (this process)
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    pu.run(spec_of("aime25"), ["--local_dataset_path", str(FIXTURES / "aime25"), "--local_save_dir", str(out)])
    assert not stale.exists() and live.exists()
    assert (out / "test.parquet").exists()


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(Exception):
        pu.write_parquet_atomic([{"a": 1}, {"a": object()}], str(target))  # pyarrow cannot store object()
    assert list(tmp_path.iterdir()) == []


def test_single_file_is_taken_as_its_split(tmp_path):
    src = tmp_path / "copy_of_the_test_split.jsonl"
    src.write_text((FIXTURES / "math500" / "test.jsonl").read_text())
    written = pu.run(spec_of("math500"), ["--local_dataset_path", str(src), "--local_save_dir", str(tmp_path / "o")])
    assert len(read_parquet(written["test"])) == 2
    # a two-split dataset cannot tell which split an unnamed file holds
    unnamed = tmp_path / "gsm.jsonl"
    unnamed.write_text((FIXTURES / "gsm8k" / "main" / "train.jsonl").read_text())
    with pytest.raises(pu.BadFile, match="cannot tell which of the splits"):
        pu.load_splits(spec_of("gsm8k"), str(unnamed))


# ----------------------------------------------------------------------------------------------
# real test sets (../shared/data), never copied into the project
# ----------------------------------------------------------------------------------------------

REAL = {  # script -> (file, number of rows, field holding the expected gold)
    "math500": ("math500_test.jsonl", 500, "answer"),
    "math_lighteval": ("math500_test.jsonl", 500, "answer"),  # same problem/solution layout as MATH-lighteval
    "gsm8k": ("gsm8k_test.jsonl", 1319, None),
    "aime24": ("aime24_test.jsonl", 30, "answer"),
    "amc23": ("amc23_test.jsonl", 40, None),
}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_test_sets(name, tmp_path):
    file, count, gold_key = REAL[name]
    written = pu.run(spec_of(name), ["--local_dataset_path", str(SHARED_DATA / file), "--local_save_dir", str(tmp_path)])
    rows = read_parquet(written["test"])
    assert len(rows) == count
    source = [json.loads(line) for line in (SHARED_DATA / file).open()]
    golds = [r["reward_model"]["ground_truth"] for r in rows]
    if gold_key:
        assert golds == [str(s[gold_key]) for s in source]
    else:  # numbers: gsm8k after '####', amc23 stored as floats
        assert all(g.lstrip("-").replace(".", "", 1).isdigit() for g in golds), golds
    assert all(r["prompt"][1]["content"] for r in rows)


def test_prepare_paper_data_writes_where_the_run_scripts_read(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "LOCAL_DATA_ROOT": str(FIXTURES), "PYTHON": sys.executable,
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    env.pop("DATA_DIR", None)
    proc = subprocess.run(["bash", str(PRE / "prepare_paper_data.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "data" / "bnpo"
    # the run scripts' defaults: $HOME/data/bnpo/math_lighteval/train.parquet and four validation sets
    for rel in ("math_lighteval/train.parquet", "math500/test.parquet", "amc23/test.parquet",
                "aime24/test.parquet", "aime25/test.parquet"):
        assert read_parquet(root / rel), rel
