"""data_preprocess/: the six converters on small fixtures in each dataset's real field layout,
the shared answer extraction, bad rows, atomic writes, and (when ../shared/data exists) real sets."""

from __future__ import annotations

import importlib.util
import json
import os
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
    system = read_parquet(tmp_path / "test.parquet")[0]["prompt"][0]["content"]
    assert "<think>" in system and "</answer>" in system and "\\boxed{}" in system


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
    with pytest.raises(pu.BadRow, match=r"aime25: split 'test' row 1: no question text"):
        pu.run(spec_of("aime25"), ["--local_dataset_path", str(tmp_path / "src"), "--local_save_dir", str(tmp_path / "o")])


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
    with pytest.raises(SystemExit, match="cannot tell which of the splits"):
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
