"""A user's text files: plain lines, CSV, TSV or JSON lines, with a text column and maybe labels.

One reader for every place a file of texts is given (``--calibration``, ``--parity-text``,
``--eval-data``, ``optimize eval --data``), so each format and each mistake in one is handled
the same way: a one-line InputError naming the file, the line and what would fix it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from optimize.errors import InputError

TABULAR = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Rows:
    """Texts, and their labels as written in the file (names or ids, strings) where asked for."""

    path: Path
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None = None


def _check_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise InputError(f"text file {path} does not exist", f"check the path given to {flag}")
    if path.is_dir():
        raise InputError(f"text file {path} is a folder", f"pass a text, CSV, TSV or JSON-lines file to {flag}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of a UTF-8 file; invalid UTF-8 is one line naming where."""
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"text file {path} is not valid UTF-8 (line {number}, byte {exc.start})",
                        "convert it with `iconv -f LATIN1 -t UTF-8` or pass another file",
                    ) from exc
    except OSError as exc:
        raise InputError(f"cannot read text file {path}: {exc.strerror}", "check its permissions") from exc


def is_tabular(path: Path) -> bool:
    return path.suffix.lower() in TABULAR or path.suffix.lower() in JSON_LINES


def _records(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    suffix = path.suffix.lower()
    if suffix in TABULAR:
        text = "".join(line for _, line in _lines(path))
        reader = csv.DictReader(io.StringIO(text), delimiter=TABULAR[suffix])
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise InputError(f"{path} is not valid {suffix[1:].upper()} (line {reader.line_num}: {exc})", "fix the quoting of that line") from exc
        return
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number} is not JSON ({exc.msg})", "write one JSON object per line") from exc
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number} is not a JSON object", 'write one object per line, e.g. {"text": "...", "label": "..."}')
        yield number, record


def read_rows(path: Path, *, text_column: str = "text", label_column: str | None = None, flag: str = "--data") -> Rows:
    """Every row's text (white space folded) and label; a plain text file is one text per line, no labels."""
    _check_file(path, flag)
    if not is_tabular(path):
        if label_column:
            raise InputError(f"{path} is plain text and has no label column", "pass a CSV, TSV or JSON-lines file with a label column")
        texts = tuple(t for t in (" ".join(line.split()) for _, line in _lines(path)) if t)
        if not texts:
            raise InputError(f"text file {path} holds no text", f"pass a file with one non-empty text per line to {flag}")
        return Rows(path, texts)
    texts: list[str] = []
    labels: list[str] = []
    columns: list[str] | None = None
    for number, record in _records(path):
        if columns is None:
            columns = [str(c) for c in record]
        for column in (text_column, label_column):
            if column and column not in record:
                raise InputError(
                    f"{path} has no column {column!r} (line {number}; columns: {', '.join(map(str, record))})",
                    f"pass --text-column / --label-column naming one of them",
                )
        text = " ".join(str(record[text_column] or "").split())
        if not text:
            raise InputError(f"{path} line {number} has an empty {text_column!r}", "remove the row or fill in its text")
        texts.append(text)
        if label_column:
            label = record[label_column]
            if label is None or str(label).strip() == "":
                raise InputError(f"{path} line {number} has no {label_column!r}", "remove the row or give it a label")
            labels.append(str(label).strip())
    if not texts:
        raise InputError(f"{path} holds no rows", f"pass a file with a header and at least one row to {flag}")
    return Rows(path, tuple(texts), tuple(labels) if label_column else None)


def read_texts(path: Path, *, text_column: str = "text", flag: str = "--calibration") -> Iterator[str]:
    """The texts of a file, in order: streamed for plain text, the text column of a table."""
    if is_tabular(path):
        yield from read_rows(path, text_column=text_column, flag=flag).texts
        return
    _check_file(path, flag)
    for _, line in _lines(path):
        text = " ".join(line.split())
        if text:
            yield text
