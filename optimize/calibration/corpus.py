"""Real text, streamed: the built-in corpus (CPython's pydoc topics) and user text files.

The built-in corpus is split once, deterministically, into a calibration part and a held-out
part; parity is measured on the held-out part only, so an artifact is never judged on the
text it was calibrated on.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path

from optimize.errors import InputError

#: one paragraph in this many goes to the held-out (parity) part.
HELD_OUT_EVERY = 5

_HEADING = re.compile(r"[*=\-~^ ]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _is_prose(text: str) -> bool:
    """Skip headings, code listings and tables: keep paragraphs that read as English."""
    if len(text.split()) < 6 or _HEADING.fullmatch(text):
        return False
    prose = sum(c.isalpha() or c == " " for c in text) / len(text)
    return prose >= 0.85


@lru_cache(maxsize=1)
def pydoc_paragraphs() -> tuple[str, ...]:
    """Paragraphs of CPython's ``pydoc_data/topics.py`` (about 1,500, 65k words), in a fixed order."""
    try:
        from pydoc_data import topics
    except ImportError as exc:  # pragma: no cover - part of every CPython
        raise InputError(
            "this Python has no pydoc_data module for the built-in text corpus",
            "pass --calibration FILE with one text per line",
        ) from exc
    paragraphs: list[str] = []
    for key in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[key]):
            text = " ".join(block.split())
            if _is_prose(text):
                paragraphs.append(text)
    return tuple(paragraphs)


def _held_out(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % HELD_OUT_EVERY == 0


def calibration_paragraphs() -> tuple[str, ...]:
    return tuple(p for p in pydoc_paragraphs() if not _held_out(p))


def held_out_paragraphs() -> tuple[str, ...]:
    return tuple(p for p in pydoc_paragraphs() if _held_out(p))


def sentences(paragraphs: tuple[str, ...]) -> tuple[str, ...]:
    """Paragraphs split into sentences of four words or more: more, shorter texts."""
    return tuple(s for p in paragraphs for s in _SENTENCE_END.split(p) if len(s.split()) >= 4)


def mixed_lengths(paragraphs: tuple[str, ...]) -> tuple[str, ...]:
    """Sentences and whole paragraphs interleaved, so a sample spans short and long inputs."""
    whole = set(paragraphs)
    short = tuple(s for s in sentences(paragraphs) if s not in whole)
    mixed: list[str] = []
    for index in range(max(len(short), len(paragraphs))):
        if index < len(paragraphs):
            mixed.append(paragraphs[index])
        if index < len(short):
            mixed.append(short[index])
    return tuple(mixed)


def read_text_lines(path: Path) -> Iterator[str]:
    """Stream non-empty lines of a UTF-8 text file; problems become one-line InputErrors."""
    if not path.exists():
        raise InputError(f"text file {path} does not exist", "check the path given to --calibration")
    if path.is_dir():
        raise InputError(f"text file {path} is a folder", "pass a UTF-8 text file with one text per line")
    try:
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"text file {path} is not valid UTF-8 (line {line_number}, byte {exc.start})",
                        "convert it with `iconv -f LATIN1 -t UTF-8` or pass another file",
                    ) from exc
                text = " ".join(line.split())
                if text:
                    yield text
    except OSError as exc:
        raise InputError(f"cannot read text file {path}: {exc.strerror}", "check its permissions") from exc


def take_texts(source: Iterator[str] | tuple[str, ...], count: int, what: str, path: Path | None = None) -> list[str]:
    """The first ``count`` texts; an InputError if there are none at all."""
    if count < 1:
        raise InputError(f"{what} size must be at least 1, got {count}", f"pass a positive --{what}-size")
    texts = list(islice(iter(source), count))
    if not texts:
        where = f"text file {path}" if path else "the text source"
        raise InputError(f"{where} holds no text for {what}", "pass a file with one non-empty text per line")
    return texts


def calibration_texts(path: Path | None, count: int) -> list[str]:
    source = read_text_lines(path) if path else iter(mixed_lengths(calibration_paragraphs()))
    return take_texts(source, count, "calibration", path)


@lru_cache(maxsize=1)
def held_out_texts() -> tuple[str, ...]:
    """Held-out texts, minus any that also occur in the calibration part (a sentence repeated
    in two paragraphs of the docs would otherwise be in both)."""
    calibration = set(mixed_lengths(calibration_paragraphs()))
    return tuple(t for t in mixed_lengths(held_out_paragraphs()) if t not in calibration)


def parity_texts(path: Path | None, count: int) -> list[str]:
    source = read_text_lines(path) if path else iter(held_out_texts())
    return take_texts(source, count, "parity", path)
