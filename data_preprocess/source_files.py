"""Checks of local source files before `datasets` reads them, so that a bad file is a one-line error
naming the file, the line, and the fix, not a traceback from deep inside `datasets` or pyarrow."""

from __future__ import annotations

import json
import os

TEXT_TYPES = (".json", ".jsonl", ".csv")
BINARY_TYPES = (".parquet", ".arrow")


class BadFile(ValueError):
    """A local source file that cannot be read; the message says which, where and how to fix it."""


def data_files(path: str) -> list[str]:
    """The data files ``datasets`` would read under ``path`` (a file, or a folder searched recursively)."""
    if os.path.isfile(path):
        return [path]
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # .cache, .git
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(TEXT_TYPES + BINARY_TYPES)]
    return found


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def check_file(path: str) -> None:
    """Raise BadFile if ``path`` is empty, not UTF-8 text, or (JSON Lines) has a line that is no JSON object."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise BadFile(f"{path}: the file is empty; point --local_dataset_path at a file or folder with the dataset's rows")
    if not path.lower().endswith(TEXT_TYPES):
        _check_binary(path)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFile(f"{path}: line {_line_of(data, e.start)}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
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
    """Check every data file under ``path``; BadFile for the first bad one or if there is none."""
    files = data_files(path)
    if not files:
        raise BadFile(f"{path}: no data files in this folder (looked for {', '.join(TEXT_TYPES + BINARY_TYPES)}); "
                      "point --local_dataset_path at the dataset's folder or file")
    for file in files:
        check_file(file)


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, for wrapping library errors."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
