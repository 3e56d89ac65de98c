"""What the engines are fed: fixed shapes of real tokens, or real sentences at natural length."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from optimize.calibration.batches import token_batches, tokenize
from optimize.calibration.corpus import held_out_paragraphs, held_out_texts
from optimize.runtimes.base import Feeds


def fixed_shape(tokenizer, input_names: tuple[str, ...], batch: int, seq_len: int) -> Feeds:
    """``batch`` rows of exactly ``seq_len`` real tokens (no padding), each row different text."""
    paragraphs = held_out_paragraphs()
    text = " ".join(paragraphs)
    words = text.split()
    rows = [" ".join(words[i * 37 :] + words[: i * 37]) for i in range(batch)]
    return tokenize(tokenizer, rows, input_names, seq_len, pad_to_max=True)


def real_length(tokenizer, input_names: tuple[str, ...], batch: int, seq_len: int, texts: int) -> list[Feeds]:
    """Held-out sentences and paragraphs in batches padded only to their longest member."""
    chosen = list(itertools.islice(itertools.cycle(held_out_texts()), texts))
    return list(token_batches(tokenizer, chosen, input_names, batch_size=batch, seq_len=seq_len))


def cycling(run: Callable[[Feeds], object], workload: list[Feeds]) -> Callable[[], object]:
    """A zero-argument call that feeds the next batch of the workload each time it is called.

    Every engine gets its own cycle over the same list, so engines timed for the same number
    of runs see the same batches in the same order.
    """
    batches = itertools.cycle(workload)
    return lambda: run(next(batches))
