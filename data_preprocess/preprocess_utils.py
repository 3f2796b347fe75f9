"""The data_preprocess converters: the datasets (:data:`DATASETS`), answers, prompts, verl's row schema, parquet,
and checks of local source files (a bad one is a one-line error naming the file, the line and the fix, not a
traceback from deep inside `datasets` or pyarrow).

``<name>.py`` converts ``DATASETS[name]`` (:func:`main`). The rows follow verl's RL dataset schema::

    data_source   str                 the hub id of the dataset (groups validation metrics)
    prompt        [{"role", "content"}] chat messages (template: qwen or r1)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"split", "index" (row in the source split), "question"}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

# The authors' system prompts (changyi7231/BNPO, recipe/bnpo/src/data_prepare.py), word for word.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
R1_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>."
)
# qwen: the paper's run; r1: the think/answer layout of the format-reward (AD-BNPO) runs. The question is the user turn.
PROMPT_TEMPLATES: dict[str, Callable[[str], list[dict]]] = {
    name: lambda q, system=system: [{"role": "system", "content": system}, {"role": "user", "content": q}]
    for name, system in (("qwen", BOXED_INSTRUCTION), ("r1", R1_INSTRUCTION))
}
N_REPEAT_DEFAULT = 1  # the authors' data_prepare.py default: validation files hold each question once


class BadRow(ValueError):
    """A source row whose question or answer cannot be read."""


class BadFile(ValueError):
    """A local source file that cannot be read; the message says which, where and how to fix it."""


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN = re.compile(r"\s+([^\s${}]+)")  # MATH also writes "\boxed 5" without braces


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``, or ``\\boxed 5``) in ``text``; None if absent.

    Braces are balanced (escaped ones skipped); a box that never closes is passed over. Not verl's
    last_boxed_only_string + remove_boxed: they agree on a well-formed ``\\boxed{…}`` (all of MATH-500's and AIME
    2024's solutions but for a trailing space), not on the other forms, and importing them loads torch and Ray
    (tests/test_preprocess.py, ``test_last_boxed_against_verls_own_functions``).
    """
    for match in reversed(list(_BOXED.finditer(text))):
        start = len(text) - len(text[match.end():].lstrip())
        if not text.startswith("{", start):
            bare = _BARE_TOKEN.match(text, match.end())
            if bare:
                return bare.group(1)
            continue
        depth = 0  # an escaped character such as \{ or \} does not count
        for brace in re.finditer(r"\\.|[{}]", text[start:], re.S):
            depth += {"{": 1, "}": -1}.get(brace.group(), 0)
            if depth == 0:
                return text[start + 1 : start + brace.start()].strip()
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


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the default output folder is ~/data/bnpo/<name>
    hub_id: str  # also every row's data_source
    splits: Sequence[str]  # the source splits, each written to <split>.parquet
    question_keys: Sequence[str]  # fields tried in turn for the question
    answer: Sequence[tuple[Callable[[dict, str], str], str]]  # (reader, field) tried in turn; a reader raises BadRow
    hub_config: Optional[str] = None  # the hub config name (gsm8k: "main")


_ANSWER_OR_SOLUTION = ((plain_answer, "answer"), (boxed_answer, "solution"))
DATASETS = {spec.name: spec for spec in (
    # the paper's training set: the last \boxed{...} of the MATH solution
    DatasetSpec("math_lighteval", "DigitalLearningGmbH/MATH-lighteval", ("train", "test"), ("problem",),
                ((boxed_answer, "solution"),)),
    # the paper's validation sets. MATH-500: `answer` is the gold, copies without it still carry the `solution`;
    # aime24: the hub copy has the answer boxed in `solution`, other copies an `answer`; amc23 stores 27.0 for 27
    DatasetSpec("math500", "HuggingFaceH4/MATH-500", ("test",), ("problem",), _ANSWER_OR_SOLUTION),
    DatasetSpec("amc23", "math-ai/amc23", ("test",), ("question", "problem"), ((plain_answer, "answer"),)),
    DatasetSpec("aime24", "math-ai/aime24", ("test",), ("problem", "question"), _ANSWER_OR_SOLUTION),
    DatasetSpec("aime25", "math-ai/aime25", ("test",), ("problem", "question"), ((plain_answer, "answer"),)),
    # the answer is what follows the last "####", thousands separators removed
    DatasetSpec("gsm8k", "openai/gsm8k", ("train", "test"), ("question",), ((gsm8k_answer, "answer"),), "main"),
)}


def _question_and_answer(spec: DatasetSpec, row: dict) -> tuple[str, str]:
    for key in spec.question_keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            break
    else:
        raise BadRow(f"no question text in field(s) {', '.join(map(repr, spec.question_keys))}")
    reasons = []  # datasets name the answer's field differently across copies
    for read, key in spec.answer:
        try:
            return value.strip(), read(row, key)
        except BadRow as e:
            reasons.append(str(e))
    raise BadRow("; ".join(reasons))


def convert_split(spec: DatasetSpec, split: str, rows, template: str, skip_bad_rows: bool,
                  source: str = "") -> tuple[list, int]:
    """Rows of one source split -> verl rows. Returns (rows, number skipped)."""
    out, skipped, first_bad = [], 0, None
    for index, row in enumerate(rows):
        try:
            question, answer = _question_and_answer(spec, row)
        except BadRow as e:
            where = f"{spec.name}: {source + ': ' if source else ''}split {split!r} row {index}: {e}"
            if not skip_bad_rows:
                raise BadRow(f"{where} (fix the row, or pass --skip_bad_rows to drop such rows)") from None
            skipped += 1
            first_bad = first_bad or where
            continue
        out.append({"data_source": spec.hub_id, "prompt": PROMPT_TEMPLATES[template](question), "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": answer},
                    "extra_info": {"split": split, "index": index, "question": question}})
    if skipped:
        print(f"{spec.name}: skipped {skipped} bad row(s) of {index + 1} in split {split!r} (first: {first_bad})")
    return out, skipped


_TMP_PREFIX = ".tmp-"


def prepare_save_dir(path: str) -> str:
    """``--local_save_dir`` as an absolute folder that exists (BadFile if it cannot be one), without the temporary
    files that killed runs (SIGKILL, power loss) left: ``.tmp-<pid>-*.parquet`` whose process <pid> is gone."""
    folder = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise BadFile(f"--local_save_dir {folder} is a file, not a folder; give a folder path (it is created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise BadFile(f"--local_save_dir {folder}: cannot create the folder ({e.strerror}); "
                      "give a folder you can write to") from None
    for name in os.listdir(folder):
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        temp = name.startswith(_TMP_PREFIX) and name.endswith(".parquet") and pid.isdigit()
        if not temp or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(folder, name))
            print(f"removed {os.path.join(folder, name)}, left by an interrupted run (process {pid})")
        except PermissionError:  # alive, someone else's
            pass
    return folder


def write_parquet_atomic(rows: list, path: str) -> None:
    """Write ``rows`` to ``path`` through a temporary file in the same folder, then rename. The temporary file is
    removed on any error, Ctrl-C and (with :func:`main`'s handler) SIGTERM; :func:`prepare_save_dir` removes one
    that SIGKILL left."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise BadRow(f"no rows left to write to {path}")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f"{_TMP_PREFIX}{os.getpid()}-",
                               suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_TEXT_TYPES = (".json", ".jsonl", ".csv")


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, for wrapping library errors."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_file(path: str) -> None:
    """Raise BadFile if ``path`` is empty, not UTF-8 text, (JSON Lines) has a line that is no JSON object, or
    (parquet, Arrow) cannot be opened."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise BadFile(f"{path}: the file is empty; point --local_dataset_path at a file or folder with the "
                      "dataset's rows")
    if not path.lower().endswith(_TEXT_TYPES):
        return _check_binary(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BadFile(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                      "re-save the file as UTF-8") from None
    if path.lower().endswith(".csv"):
        return
    if path.lower().endswith(".json"):
        try:
            json.loads(text)
            return  # one JSON document (a list of rows, or columns)
        except json.JSONDecodeError:
            pass  # JSON Lines under a .json name: checked line by line below
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadFile(f"{path}: line {number}: not a complete JSON object ({e.msg}); "
                          "repair or delete that line (a truncated download?)") from None
        if not isinstance(row, dict):
            raise BadFile(f"{path}: line {number}: a JSON {type(row).__name__}, not an object with the row's fields; "
                          "each line must be one {\"field\": value, ...} row")


def _check_binary(path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.lower().endswith(".parquet"):
            pq.read_metadata(path)
        else:
            with pa.memory_map(path) as source:
                try:
                    pa.ipc.open_stream(source).schema
                except pa.ArrowInvalid:
                    source.seek(0)
                    pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException) as e:
        kind = "parquet" if path.lower().endswith(".parquet") else "Arrow"
        raise BadFile(f"{path}: not a readable {kind} file ({one_line(e)}); re-download or re-export it") from None


def check_source(path: str) -> None:
    """Check the data files ``datasets`` would read under ``path`` (a file, or a folder searched recursively);
    BadFile for the first bad one or if there is none."""
    files = [path] if os.path.isfile(path) else []
    for folder, subfolders, names in os.walk(path):  # nothing for a file
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # .cache, .git
        files += [os.path.join(folder, f) for f in sorted(names) if f.lower().endswith(tuple(_BUILDERS))]
    if not files:
        raise BadFile(f"{path}: no data files in this folder (looked for {', '.join(_BUILDERS)}); "
                      "point --local_dataset_path at the dataset's folder or file")
    for file in files:
        check_file(file)


def _load_local(spec: DatasetSpec, local_path: str):
    import datasets

    if os.path.isfile(local_path):
        ext = os.path.splitext(local_path)[1].lower()
        if ext not in _BUILDERS:
            raise BadFile(f"{local_path}: unknown file type {ext!r}; convert it to one of {sorted(_BUILDERS)}")
        named = [s for s in spec.splits if s in os.path.basename(local_path)]
        if len(named) != 1 and len(spec.splits) != 1:
            raise BadFile(f"{local_path}: cannot tell which of the splits {sorted(spec.splits)} this file holds; "
                          "put it in a folder as <split>.jsonl or name the file after its split")
        check_source(local_path)
        split = (named or spec.splits)[0]
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
    """Split -> rows, from the hub or ``local_path``: anything ``datasets.load_dataset`` reads (a folder of
    jsonl/parquet files named by split, a hub snapshot) or one file, taken as the split its name contains
    (``…test….jsonl`` -> test) or as a one-split dataset's split. BadFile with a one-line reason if unreadable."""
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
    wanted = [s for s in spec.splits if s in loaded]
    if not wanted:
        raise BadFile(f"{source}: none of the splits {sorted(spec.splits)} found (it has {sorted(loaded)}); "
                      "name the files after their split, e.g. test.jsonl")
    missing = [s for s in spec.splits if s not in loaded]
    if missing:
        print(f"{spec.name}: split(s) {missing} not in {source}; converting {wanted}")
    return {s: loaded[s] for s in wanted}


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
    """Convert every split, then write them all (nothing is written if any split fails). Returns output file stem
    -> path written (``<split>_repeated`` too with ``--n_repeat`` > 1: the authors' files, each row n times in a
    row, for more validation samples per question)."""
    args = parse_args(spec, argv)
    save_dir = prepare_save_dir(args.local_save_dir)
    converted = {}
    for split, rows in load_splits(spec, args.local_dataset_path).items():
        converted[split], _ = convert_split(spec, split, rows, args.prompt_template, args.skip_bad_rows,
                                            args.local_dataset_path or spec.hub_id)
        if args.n_repeat > 1:
            converted[f"{split}_repeated"] = [row for row in converted[split] for _ in range(args.n_repeat)]
    written = {}
    for stem, rows in converted.items():
        written[stem] = os.path.join(save_dir, f"{stem}.parquet")
        write_parquet_atomic(rows, written[stem])
        print(f"{spec.name}: wrote {len(rows)} rows to {written[stem]}")
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
