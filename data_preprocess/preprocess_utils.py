"""Shared machinery of the data_preprocess scripts: answers, prompts, the verl row schema, parquet.

Each script (``math500.py``, ``gsm8k.py``, …) only declares a :class:`DatasetSpec` — where the data
lives, which field holds the question, how the answer is found — and calls :func:`main`. The rows it
writes follow verl's RL dataset schema::

    data_source   str                 the hub id of the dataset (groups validation metrics)
    prompt        [{"role", "content"}] chat messages (template: qwen or r1)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"split", "index" (row in the source split), "question"}
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

R1_INSTRUCTION = (
    "A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
    "The Assistant first thinks through the reasoning process and then gives the User the answer. "
    "The reasoning goes inside <think> </think> tags and the answer inside <answer> </answer> tags, "
    "i.e. <think> reasoning here </think><answer> answer here </answer>. "
    "Put the final answer within \\boxed{} inside the answer tags."
)

PROMPT_TEMPLATES: dict[str, Callable[[str], list[dict]]] = {
    # spec §6: the paper's system prompt, the question as the user turn
    "qwen": lambda q: [{"role": "system", "content": BOXED_INSTRUCTION}, {"role": "user", "content": q}],
    # format-reward (AD-BNPO) experiments: the R1 think/answer layout
    "r1": lambda q: [{"role": "system", "content": R1_INSTRUCTION}, {"role": "user", "content": q}],
}


# ---------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------


class BadRow(ValueError):
    """A source row whose question or answer cannot be read."""


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN = re.compile(r"\s+([^\s${}]+)")  # MATH also writes "\boxed 5" without braces


def _braced(text: str, start: int) -> Optional[str]:
    """Content of the group opening at ``text[start] == "{"``, or None if it never closes."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped character such as \{ or \} does not count
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i].strip()
        i += 1
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``, or ``\\boxed 5``) in ``text``; None if absent.

    Braces are balanced (escaped ones skipped); a box that never closes is passed over.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        rest = match.end()
        brace = rest
        while brace < len(text) and text[brace].isspace():
            brace += 1
        if brace < len(text) and text[brace] == "{":
            content = _braced(text, brace)
        else:
            bare = _BARE_TOKEN.match(text, rest)
            content = bare.group(1) if bare else None
        if content is not None:
            return content
    return None


def boxed_answer(row: dict, key: str) -> str:
    text = row.get(key)
    if not isinstance(text, str):
        raise BadRow(f"field {key!r} is missing or not text")
    answer = last_boxed(text)
    if not answer:
        raise BadRow(f"no balanced \\boxed{{...}} with content in field {key!r}")
    return answer


def plain_answer(row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, float) and value.is_integer():  # amc23 stores 27.0 for 27
        value = int(value)
    if value is None or isinstance(value, (dict, list)) or not str(value).strip():
        raise BadRow(f"field {key!r} is missing or empty")
    return str(value).strip()


def gsm8k_answer(row: dict, key: str = "answer") -> str:
    text = row.get(key)
    if not isinstance(text, str) or "####" not in text:
        raise BadRow(f"field {key!r} has no '#### <answer>' line")
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise BadRow(f"field {key!r} has an empty answer after '####'")
    return answer


def first_present(*readers: Callable[[dict], str]) -> Callable[[dict], str]:
    """Answer reader trying ``readers`` in turn (datasets name fields differently across copies)."""

    def read(row: dict) -> str:
        reasons = []
        for reader in readers:
            try:
                return reader(row)
            except BadRow as e:
                reasons.append(str(e))
        raise BadRow("; ".join(reasons))

    return read


def field_reader(fn: Callable[[dict, str], str], key: str) -> Callable[[dict], str]:
    return lambda row: fn(row, key)


# ---------------------------------------------------------------------------------------------
# dataset description and conversion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """What a script converts.

    Attributes:
        name: short name; the default output folder is ``~/data/bnpo/<name>``.
        hub_id: Hugging Face id, also written as every row's ``data_source``.
        splits: source split -> output file stem (e.g. {"test": "test"}).
        question_keys: fields tried in turn for the question.
        answer: row -> answer string; raises BadRow.
        hub_config: the hub config name (gsm8k: "main").
    """

    name: str
    hub_id: str
    splits: dict
    question_keys: Sequence[str]
    answer: Callable[[dict], str]
    hub_config: Optional[str] = None
    ability: str = "math"


def question_of(row: dict, keys: Sequence[str]) -> str:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise BadRow(f"no question text in field(s) {', '.join(map(repr, keys))}")


def convert_split(spec: DatasetSpec, split: str, rows, template: str, skip_bad_rows: bool) -> tuple[list, int]:
    """Rows of one source split -> verl rows. Returns (rows, number skipped)."""
    make_prompt = PROMPT_TEMPLATES[template]
    out, skipped, first_bad = [], 0, None
    for index, row in enumerate(rows):
        try:
            question = question_of(row, spec.question_keys)
            answer = spec.answer(row)
        except BadRow as e:
            where = f"{spec.name}: split {split!r} row {index}: {e}"
            if not skip_bad_rows:
                raise BadRow(f"{where} (fix the row, or pass --skip_bad_rows to drop such rows)") from None
            skipped += 1
            first_bad = first_bad or where
            continue
        out.append(
            {
                "data_source": spec.hub_id,
                "prompt": make_prompt(question),
                "ability": spec.ability,
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": index, "question": question},
            }
        )
    if skipped:
        print(f"{spec.name}: skipped {skipped} bad row(s) of {index + 1} in split {split!r} (first: {first_bad})")
    return out, skipped


def write_parquet_atomic(rows: list, path: str) -> None:
    """Write ``rows`` to ``path`` through a temporary file in the same folder, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise BadRow(f"no rows left to write to {path}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_splits(spec: DatasetSpec, local_path: Optional[str]) -> dict:
    """Source split -> rows (a list of dicts), from ``local_path`` or the hub.

    ``local_path`` may be anything ``datasets.load_dataset`` reads (a folder of jsonl/parquet files
    named by split, a hub snapshot) or a single file, which is taken as the split its name contains
    (``…test….jsonl`` -> test) or as the only split of a one-split dataset.
    """
    import datasets

    if local_path is None:
        loaded = datasets.load_dataset(spec.hub_id, spec.hub_config)
    elif os.path.isfile(local_path):
        ext = os.path.splitext(local_path)[1].lower()
        if ext not in _BUILDERS:
            raise SystemExit(f"--local_dataset_path {local_path}: unknown file type {ext!r} (use {sorted(_BUILDERS)})")
        base = os.path.basename(local_path)
        named = [s for s in spec.splits if s in base]
        if len(named) != 1 and len(spec.splits) != 1:
            raise SystemExit(
                f"--local_dataset_path {local_path}: cannot tell which of the splits {sorted(spec.splits)} this "
                "file holds; put it in a folder as <split>.jsonl or name the file after its split"
            )
        split = named[0] if len(named) == 1 else next(iter(spec.splits))
        loaded = datasets.load_dataset(_BUILDERS[ext], data_files={split: os.path.abspath(local_path)})
    elif os.path.isdir(local_path):
        folder = os.path.abspath(local_path)
        # a hub snapshot keeps each config in a subfolder (gsm8k: main/); a plain folder has none
        if spec.hub_config and os.path.isdir(os.path.join(folder, spec.hub_config)):
            loaded = datasets.load_dataset(folder, data_dir=spec.hub_config)
        else:
            loaded = datasets.load_dataset(folder)
    else:
        raise SystemExit(f"--local_dataset_path {local_path}: no such file or folder")

    missing = [s for s in spec.splits if s not in loaded]
    wanted = [s for s in spec.splits if s in loaded]
    if not wanted:
        raise SystemExit(
            f"{spec.name}: none of the splits {sorted(spec.splits)} found in {local_path or spec.hub_id} "
            f"(it has {sorted(loaded)})"
        )
    if missing:
        print(f"{spec.name}: split(s) {missing} not in {local_path or spec.hub_id}; converting {wanted}")
    return {s: loaded[s] for s in wanted}


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(spec: DatasetSpec, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Convert {spec.hub_id} to verl parquet files.")
    parser.add_argument("--local_dataset_path", default=None, help="a local copy (file or folder); default: the hub")
    parser.add_argument(
        "--local_save_dir",
        default=os.path.join("~", "data", "bnpo", spec.name),
        help="output folder for <split>.parquet (default: %(default)s)",
    )
    parser.add_argument("--prompt_template", choices=sorted(PROMPT_TEMPLATES), default="qwen")
    parser.add_argument("--skip_bad_rows", action="store_true", help="drop rows whose answer cannot be read")
    return parser.parse_args(argv)


def run(spec: DatasetSpec, argv: Optional[Sequence[str]] = None) -> dict:
    """Convert every split, then write them all; nothing is written if any split fails.

    Returns:
        output file stem -> path written.
    """
    args = parse_args(spec, argv)
    save_dir = os.path.expanduser(args.local_save_dir)
    converted = {}
    for split, rows in load_splits(spec, args.local_dataset_path).items():
        converted[spec.splits[split]], _ = convert_split(spec, split, rows, args.prompt_template, args.skip_bad_rows)
    written = {}
    for stem, rows in converted.items():
        path = os.path.join(save_dir, f"{stem}.parquet")
        write_parquet_atomic(rows, path)
        written[stem] = path
        print(f"{spec.name}: wrote {len(rows)} rows to {path}")
    return written


def main(spec: DatasetSpec) -> None:
    try:
        run(spec)
    except BadRow as e:
        sys.exit(f"error: {e}")
