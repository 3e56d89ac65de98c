"""Real text, streamed: the built-in corpus of several domains, and user text files.

The built-in corpus has four calibration domains, sampled in balance (round-robin), and one
domain kept apart:

- docs: CPython's own ``pydoc_data/topics.py`` (found in every Python, nothing shipped);
- literature, speeches, email: shipped in ``calibration/data/`` (Moby-Dick, U.S. State of the
  Union addresses, the SpamAssassin public corpus's non-spam mail; see data/README.md);
- reviews (kept apart): movie-review snippets that calibration, the int8 search and the pruning
  fit never read. Parity is measured on them as text of a domain the artifact never saw.

Each calibration domain is split once, deterministically by a hash of each paragraph, into a
calibration part and a held-out part; parity is measured on the held-out parts, so an artifact
is never judged on the text it was calibrated on. A user's ``--calibration FILE`` is split the
same way when it is large enough to spare a fifth of it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import islice
from pathlib import Path

from optimize.errors import InputError

#: one paragraph in this many goes to the held-out (parity) part.
HELD_OUT_EVERY = 5
#: a user's calibration file is split into calibration and held-out lines from this many texts on;
#: a smaller one is all calibration and parity falls back to the built-in held-out text
USER_SPLIT_MIN_TEXTS = 50

_HEADING = re.compile(r"[*=\-~^ ]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _is_prose(text: str) -> bool:
    """Skip headings, code listings and tables: keep paragraphs that read as English."""
    if len(text.split()) < 6 or _HEADING.fullmatch(text):
        return False
    prose = sum(c.isalpha() or c == " " for c in text) / len(text)
    return prose >= 0.85


def _pydoc_paragraphs() -> tuple[str, ...]:
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


def _shipped(name: str) -> tuple[str, ...]:
    """One text per line of ``calibration/data/NAME.txt.gz``."""
    data = resources.files("optimize.calibration").joinpath("data", f"{name}.txt.gz").read_bytes()
    return tuple(line for line in gzip.decompress(data).decode("utf-8").splitlines() if line)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    source: str

    def paragraphs(self) -> tuple[str, ...]:
        return _domain_paragraphs(self.name)


CALIBRATION_DOMAINS = (
    Domain("docs", "software documentation", "CPython's pydoc_data/topics.py"),
    Domain("literature", "a 19th-century novel", "Herman Melville, Moby-Dick"),
    Domain("speeches", "political speeches", "U.S. State of the Union addresses, 1790-2018"),
    Domain("email", "informal e-mail", "SpamAssassin public corpus, non-spam mail bodies"),
)
UNSEEN_DOMAIN = Domain("reviews", "movie reviews", "Rotten Tomatoes review snippets (Pang and Lee)")


@lru_cache(maxsize=None)
def _domain_paragraphs(name: str) -> tuple[str, ...]:
    return _pydoc_paragraphs() if name == "docs" else _shipped(name)


def _held_out(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % HELD_OUT_EVERY == 0


def pydoc_paragraphs() -> tuple[str, ...]:
    return _domain_paragraphs("docs")


def calibration_paragraphs(domain: Domain = CALIBRATION_DOMAINS[0]) -> tuple[str, ...]:
    return tuple(p for p in domain.paragraphs() if not _held_out(p))


def held_out_paragraphs(domain: Domain = CALIBRATION_DOMAINS[0]) -> tuple[str, ...]:
    return tuple(p for p in domain.paragraphs() if _held_out(p))


def sentences(paragraphs: Iterable[str]) -> tuple[str, ...]:
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


def interleave(*sources: Iterable[str]) -> tuple[str, ...]:
    """Round-robin over the sources (each domain in turn), exact duplicates dropped: any prefix
    of the result is balanced between the domains."""
    iterators = [iter(s) for s in sources]
    out: dict[str, None] = {}
    while iterators:
        for iterator in list(iterators):
            try:
                out.setdefault(next(iterator))
            except StopIteration:
                iterators.remove(iterator)
    return tuple(out)


@lru_cache(maxsize=1)
def builtin_calibration_texts() -> tuple[str, ...]:
    """The calibration parts of every calibration domain, in balance (about 12,000 texts)."""
    return interleave(*(mixed_lengths(calibration_paragraphs(d)) for d in CALIBRATION_DOMAINS))


@lru_cache(maxsize=1)
def held_out_texts() -> tuple[str, ...]:
    """Held-out texts of every calibration domain, in balance, minus any that also occur in a
    calibration part (a sentence repeated in two paragraphs would otherwise be in both)."""
    calibration = set(builtin_calibration_texts())
    held = interleave(*(mixed_lengths(held_out_paragraphs(d)) for d in CALIBRATION_DOMAINS))
    return tuple(t for t in held if t not in calibration)


def unseen_domain_texts() -> tuple[str, ...]:
    """The domain no calibration, search or fit ever reads (several hundred texts)."""
    return UNSEEN_DOMAIN.paragraphs()


def read_text_lines(path: Path, text_column: str = "text") -> Iterator[str]:
    """The texts of a user file (plain lines, or a CSV/TSV/JSON-lines text column), streamed where
    it can be; problems become one-line InputErrors."""
    from optimize.textdata import read_texts

    return read_texts(path, text_column=text_column)


def take_texts(source: Iterator[str] | tuple[str, ...], count: int, what: str, path: Path | None = None) -> list[str]:
    """The first ``count`` texts; an InputError if there are none at all."""
    if count < 1:
        raise InputError(f"{what} size must be at least 1, got {count}", f"pass a positive --{what}-size")
    texts = list(islice(iter(source), count))
    if not texts:
        where = f"text file {path}" if path else "the text source"
        raise InputError(f"{where} holds no text for {what}", "pass a file with one non-empty text per line")
    return texts


#: a user file is read up to this many texts (recovery draws on at most 50,000)
USER_TEXTS_MAX = 200_000
#: the most calibration texts anything reads (pruning recovery, quantization-aware distillation)
RECOVERY_TEXTS_MAX = 50_000


@lru_cache(maxsize=4)
def _user_split(path: Path, text_column: str = "text") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration part, held-out part) of a user's text file, split as the built-in domains are."""
    texts = tuple(dict.fromkeys(islice(read_text_lines(path, text_column), USER_TEXTS_MAX)))
    if len(texts) < USER_SPLIT_MIN_TEXTS:
        return texts, ()
    return tuple(t for t in texts if not _held_out(t)), tuple(t for t in texts if _held_out(t))


def calibration_texts(path: Path | None, count: int, text_column: str = "text") -> list[str]:
    """Texts to calibrate, score and fit on: the user's file (minus its held-out part) or the
    built-in calibration domains in balance."""
    source = _user_split(path, text_column)[0] if path else builtin_calibration_texts()
    return take_texts(source, count, "calibration", path)


@dataclass(frozen=True)
class TextSet:
    """Texts parity is measured on, and what they are, for the report."""

    key: str  # "held_out" | "unseen_domain"
    label: str
    texts: tuple[str, ...]


def parity_sets(
    parity_path: Path | None, calibration_path: Path | None, count: int, unseen_count: int, text_column: str = "text"
) -> list[TextSet]:
    """The two kinds of held-out text an artifact is judged on.

    1. text of the calibration domains that calibration never read: ``--parity-text`` if given,
       else the held-out fifth of the user's ``--calibration`` file, else the built-in held-out text;
    2. a domain that no calibration source holds (movie reviews), minus any text that is also
       in the calibration text (a user may calibrate on reviews).
    """
    if parity_path is not None:
        held = TextSet("held_out", f"--parity-text {parity_path.name}", tuple(take_texts(read_text_lines(parity_path, text_column), count, "parity", parity_path)))
    elif calibration_path is not None and _user_split(calibration_path, text_column)[1]:
        held = TextSet("held_out", f"held out from --calibration {calibration_path.name}", _user_split(calibration_path, text_column)[1][:count])
    else:
        domains = ", ".join(d.name for d in CALIBRATION_DOMAINS)
        held = TextSet("held_out", f"held out from the calibration domains: {domains}", held_out_texts()[:count])
    calibrated = set(_user_split(calibration_path, text_column)[0]) if calibration_path is not None else set()
    shipped = unseen_domain_texts()[:unseen_count]
    unseen = tuple(t for t in shipped if t not in calibrated)
    sets = [TextSet(held.key, held.label, tuple(dict.fromkeys(held.texts)))]  # exact duplicates tie neighbours
    if unseen_count > 0 and len(unseen) >= 3:
        label = f"unseen domain: {UNSEEN_DOMAIN.description}"
        if len(unseen) < len(shipped):  # the user calibrated on this domain: say what is left of it
            label += f", the {len(unseen)} of {len(shipped)} not in --calibration"
        sets.append(TextSet("unseen_domain", label, unseen))
    return sets


def parity_texts(path: Path | None, count: int) -> list[str]:
    source = read_text_lines(path) if path else iter(held_out_texts())
    return take_texts(source, count, "parity", path)
