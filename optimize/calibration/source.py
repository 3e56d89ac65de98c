"""Calibration text for a model: the part statistics are collected on, and a held-back part.

The held-back part steers decisions (sensitivity, the accuracy budget) without being the
text statistics came from, and neither part is ever the parity text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from optimize.calibration.batches import by_length, token_batches
from optimize.calibration.corpus import calibration_texts
from optimize.config import CalibrationConfig
from optimize.runtimes.base import Feeds

#: enough texts that neighbour agreement on them predicts it on a parity set of a few hundred
HELD_BACK = 192


@dataclass(frozen=True)
class CalibrationSource:
    tokenizer: object
    input_names: tuple[str, ...]
    cfg: CalibrationConfig

    def _split(self) -> tuple[list[str], list[str]]:
        texts = calibration_texts(self.cfg.path, self.cfg.size + HELD_BACK, self.cfg.text_column)
        held = min(HELD_BACK, max(1, len(texts) // 3)) if len(texts) > 1 else 0
        return (texts[:-held] if held else texts), (texts[-held:] if held else texts)

    def batches(self) -> Iterator[Feeds]:
        """Statistics batches of similar-length texts (statistics are over every real token, so
        order is free), tokenized lazily one at a time."""
        stats_texts, _ = self._split()
        return self._batches(by_length(self.tokenizer, stats_texts, self.cfg.seq_len))

    def held_back(self, leading: int = 0) -> list[Feeds]:
        """Held-back batches of similar-length texts. The first ``leading`` texts are sorted
        apart from the rest, so the batches that hold them stay a sample of the whole corpus
        (the int8 search ranks layers on them alone), not its shortest texts."""
        _, held = self._split()
        head, rest = held[:leading], held[leading:]
        return [feeds for group in (head, rest) for feeds in self._batches(by_length(self.tokenizer, group, self.cfg.seq_len))]

    def _batches(self, texts: list[str]) -> Iterator[Feeds]:
        return token_batches(self.tokenizer, texts, self.input_names, batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len)

    def counts(self) -> tuple[int, int]:
        stats_texts, held = self._split()
        return len(stats_texts), len(held)
