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
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from source_files import BadFile, check_source, one_line

# prompts

# The authors' system prompts (changyi7231/BNPO, recipe/bnpo/src/data_prepare.py), word for word.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

R1_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>."
)

PROMPT_TEMPLATES: dict[str, Callable[[str], list[dict]]] = {
    # the paper's system prompt (the authors' run), the question as the user turn
    "qwen": lambda q: [{"role": "system", "content": BOXED_INSTRUCTION}, {"role": "user", "content": q}],
    # format-reward (AD-BNPO) experiments: the R1 think/answer layout, the question as the user turn
    "r1": lambda q: [{"role": "system", "content": R1_INSTRUCTION}, {"role": "user", "content": q}],
}


# answers


class BadRow(ValueError):
    """A source row whose question or answer cannot be read."""


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN = re.compile(r"\s+([^\s${}]+)")  # MATH also writes "\boxed 5" without braces


def _braced(text: str, start: int) -> Optional[str]:
    """Content of the group opening at ``text[start] == "{"``, or None if it never closes."""
    depth = 0  # an escaped character such as \{ or \} does not count
    for match in re.finditer(r"\\.|[{}]", text[start:], re.S):
        depth += {"{": 1, "}": -1}.get(match.group(), 0)
        if depth == 0:
            return text[start + 1 : start + match.start()].strip()
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``, or ``\\boxed 5``) in ``text``; None if absent.

    Braces are balanced (escaped ones skipped); a box that never closes is passed over. Not verl's
    last_boxed_only_string + remove_boxed: they agree on a well-formed ``\\boxed{…}`` (all of MATH-500's and
    AIME 2024's solutions, but for one trailing space), not on the other forms above, and importing them loads
    torch and Ray (tests/test_preprocess.py, ``test_last_boxed_against_verls_own_functions``).
    """
    for match in reversed(list(_BOXED.finditer(text))):
        rest = match.end()
        brace = len(text) - len(text[rest:].lstrip())
        if text.startswith("{", brace):
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
    if isinstance(value, bool):  # a bool is an int to Python, and "True" no answer
        raise BadRow(f"field {key!r} is a boolean ({value}), not an answer")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRow(f"field {key!r} is {value} (a missing value), not an answer")
        if value.is_integer():  # amc23 stores 27.0 for 27
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


# dataset description and conversion


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


def convert_split(spec: DatasetSpec, split: str, rows, template: str, skip_bad_rows: bool,
                  source: str = "") -> tuple[list, int]:
    """Rows of one source split -> verl rows. Returns (rows, number skipped)."""
    make_prompt = PROMPT_TEMPLATES[template]
    out, skipped, first_bad = [], 0, None
    for index, row in enumerate(rows):
        try:
            question = question_of(row, spec.question_keys)
            answer = spec.answer(row)
        except BadRow as e:
            where = f"{spec.name}: {source + ': ' if source else ''}split {split!r} row {index}: {e}"
            if not skip_bad_rows:
                raise BadRow(f"{where} (fix the row, or pass --skip_bad_rows to drop such rows)") from None
            skipped += 1
            first_bad = first_bad or where
            continue
        out.append({"data_source": spec.hub_id, "prompt": make_prompt(question), "ability": spec.ability,
                    "reward_model": {"style": "rule", "ground_truth": answer},
                    "extra_info": {"split": split, "index": index, "question": question}})
    if skipped:
        print(f"{spec.name}: skipped {skipped} bad row(s) of {index + 1} in split {split!r} (first: {first_bad})")
    return out, skipped


def repeat_rows(rows: list, n: int) -> list:
    """Each row ``n`` times in a row (the authors' ``*_repeated.parquet``): more validation samples per question."""
    return [row for row in rows for _ in range(n)]


# writing

_TMP_PREFIX = ".tmp-"


def _remove_stale_temp_files(folder: str) -> None:
    """Remove temporary files that a killed run (SIGKILL, power loss) left in ``folder``.

    A temporary file is named ``.tmp-<pid>-*.parquet``; it is stale when process <pid> is gone.
    """
    for name in os.listdir(folder):
        if not (name.startswith(_TMP_PREFIX) and name.endswith(".parquet")):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(folder, name))
            print(f"removed {os.path.join(folder, name)}, left by an interrupted run (process {pid})")
        except PermissionError:  # alive, someone else's
            pass


def prepare_save_dir(path: str) -> str:
    """``--local_save_dir`` as an absolute folder that exists; BadFile if it cannot be one."""
    folder = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise BadFile(f"--local_save_dir {folder} is a file, not a folder; give a folder path (it is created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise BadFile(f"--local_save_dir {folder}: cannot create the folder ({e.strerror}); "
                      "give a folder you can write to") from None
    _remove_stale_temp_files(folder)
    return folder


def write_parquet_atomic(rows: list, path: str) -> None:
    """Write ``rows`` to ``path`` through a temporary file in the same folder, then rename.

    The temporary file is removed on any error, Ctrl-C and (with :func:`main`'s handler) SIGTERM;
    one left by SIGKILL is removed by the next run that writes to the folder.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise BadRow(f"no rows left to write to {path}")
    folder = prepare_save_dir(os.path.dirname(os.path.abspath(path)))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# loading

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def _load_local(spec: DatasetSpec, local_path: str):
    import datasets

    if os.path.isfile(local_path):
        ext = os.path.splitext(local_path)[1].lower()
        if ext not in _BUILDERS:
            raise BadFile(f"{local_path}: unknown file type {ext!r}; convert it to one of {sorted(_BUILDERS)}")
        base = os.path.basename(local_path)
        named = [s for s in spec.splits if s in base]
        if len(named) != 1 and len(spec.splits) != 1:
            raise BadFile(f"{local_path}: cannot tell which of the splits {sorted(spec.splits)} this file holds; "
                          "put it in a folder as <split>.jsonl or name the file after its split")
        split = named[0] if len(named) == 1 else next(iter(spec.splits))
        check_source(local_path)
        return datasets.load_dataset(_BUILDERS[ext], data_files={split: os.path.abspath(local_path)})
    if os.path.isdir(local_path):
        folder = os.path.abspath(local_path)
        check_source(folder)
        # a hub snapshot keeps each config in a subfolder (gsm8k: main/); a plain folder has none
        if spec.hub_config and os.path.isdir(os.path.join(folder, spec.hub_config)):
            return datasets.load_dataset(folder, data_dir=spec.hub_config)
        return datasets.load_dataset(folder)
    raise BadFile(f"--local_dataset_path {local_path}: no such file or folder")


def load_splits(spec: DatasetSpec, local_path: Optional[str]) -> dict:
    """Source split -> rows, from ``local_path`` or the hub; BadFile with a one-line reason if unreadable.

    ``local_path`` may be anything ``datasets.load_dataset`` reads (a folder of jsonl/parquet files
    named by split, a hub snapshot) or a single file, which is taken as the split its name contains
    (``…test….jsonl`` -> test) or as the only split of a one-split dataset.
    """
    import datasets

    source = local_path or spec.hub_id
    try:
        loaded = datasets.load_dataset(spec.hub_id, spec.hub_config) if local_path is None else \
            _load_local(spec, local_path)
    except (BadFile, BadRow):
        raise
    except Exception as e:  # noqa: BLE001 -- whatever datasets / pyarrow / the hub raise, as one line
        fix = ("check that every file is a complete, readable dataset file with the same fields in every row"
               if local_path else "check the network, or download the dataset and pass --local_dataset_path")
        raise BadFile(f"{source}: could not be read ({one_line(e)}); {fix}") from None

    missing = [s for s in spec.splits if s not in loaded]
    wanted = [s for s in spec.splits if s in loaded]
    if not wanted:
        raise BadFile(f"{source}: none of the splits {sorted(spec.splits)} found (it has {sorted(loaded)}); "
                      "name the files after their split, e.g. test.jsonl")
    if missing:
        print(f"{spec.name}: split(s) {missing} not in {source}; converting {wanted}")
    return {s: loaded[s] for s in wanted}


# command line


N_REPEAT_DEFAULT = 1  # the authors' data_prepare.py default: validation files hold each question once


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def parse_args(spec: DatasetSpec, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Convert {spec.hub_id} to verl parquet files.")
    parser.add_argument("--local_dataset_path", default=None, help="a local copy (file or folder); default: the hub")
    parser.add_argument("--local_save_dir", default=os.path.join("~", "data", "bnpo", spec.name),
                        help="output folder for <split>.parquet (default: %(default)s)")
    parser.add_argument("--prompt_template", choices=sorted(PROMPT_TEMPLATES), default="qwen")
    parser.add_argument("--skip_bad_rows", action="store_true", help="drop rows whose answer cannot be read")
    parser.add_argument("--n_repeat", type=_positive_int, default=N_REPEAT_DEFAULT,
                        help="also write <split>_repeated.parquet with every row N times in a row (default: 1, "
                             "no such file)")
    return parser.parse_args(argv)


def run(spec: DatasetSpec, argv: Optional[Sequence[str]] = None) -> dict:
    """Convert every split, then write them all; nothing is written if any split fails.

    Returns:
        output file stem -> path written (``<stem>_repeated`` too with ``--n_repeat`` > 1).
    """
    args = parse_args(spec, argv)
    save_dir = prepare_save_dir(args.local_save_dir)
    source = args.local_dataset_path or spec.hub_id
    converted = {}
    for split, rows in load_splits(spec, args.local_dataset_path).items():
        stem = spec.splits[split]
        converted[stem], _ = convert_split(spec, split, rows, args.prompt_template, args.skip_bad_rows, source)
        if args.n_repeat > 1:
            converted[f"{stem}_repeated"] = repeat_rows(converted[stem], args.n_repeat)
    written = {}
    for stem, rows in converted.items():
        path = os.path.join(save_dir, f"{stem}.parquet")
        write_parquet_atomic(rows, path)
        written[stem] = path
        print(f"{spec.name}: wrote {len(rows)} rows to {path}")
    return written


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through write_parquet_atomic, which removes its temporary file


def main(spec: DatasetSpec) -> None:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        run(spec)
    except (BadRow, BadFile) as e:
        sys.exit(f"error: {e}")
