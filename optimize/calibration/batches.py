"""Texts -> tokenized batches of numpy feeds, produced lazily one batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from optimize.runtimes.base import Feeds


def batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while chunk := list(islice(iterator, size)):
        yield chunk


def tokenize(
    tokenizer, texts: list[str], input_names: tuple[str, ...], seq_len: int, pad_to_max: bool = False
) -> Feeds:
    """One batch, truncated at ``seq_len`` and padded to its longest text (or to ``seq_len``)."""
    encoded = tokenizer(
        texts,
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        max_length=seq_len,
        return_tensors="np",
    )
    feeds: Feeds = {}
    for name in input_names:
        if name in encoded:
            feeds[name] = np.ascontiguousarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(encoded["input_ids"], dtype=np.int64)
    return feeds


def token_batches(
    tokenizer,
    texts: Iterable[str],
    input_names: tuple[str, ...],
    *,
    batch_size: int,
    seq_len: int,
    pad_to_max: bool = False,
) -> Iterator[Feeds]:
    for chunk in batched(texts, batch_size):
        yield tokenize(tokenizer, chunk, input_names, seq_len, pad_to_max)
