"""What `optimize run` reads: texts from its arguments, from --file, or from standard input.

Files go through optimize/textdata.py, so every format and every mistake is handled as for
--calibration or --eval-data. Standard input is one text per line, strictly UTF-8.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from optimize.errors import InputError
from optimize.textdata import is_tabular, read_rows


def _stdin_lines() -> list[str]:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"standard input is not valid UTF-8 (line {line}, byte {exc.start})", "convert it with `iconv -f LATIN1 -t UTF-8`"
        ) from exc
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def run_inputs(task: str, texts: list[str] | None, file: Path | None, text_column: str) -> list[Any]:
    """The inputs in order: strings, or for question answering {"question", "context"} dicts."""
    if texts:
        inputs: list[Any] = list(texts)
        where = "the arguments"
    elif file is not None:
        where = str(file)
        if task == "question-answering" and is_tabular(file):
            rows = read_rows(file, text_column="question", label_column="context", flag="--file")
            assert rows.labels is not None
            return [{"question": q, "context": c} for q, c in zip(rows.texts, rows.labels)]
        inputs = list(read_rows(file, text_column=text_column, flag="--file").texts)
    else:
        where = "standard input"
        inputs = _stdin_lines()
    if not inputs:
        raise InputError(f"no text to run: {where} holds none", "pass texts as arguments, with --file, or one per line on standard input")
    if task == "question-answering":
        from optimize.predictors import QuestionAnswerer

        return [dict(zip(("question", "context"), QuestionAnswerer._pair(item))) for item in inputs]
    return inputs
