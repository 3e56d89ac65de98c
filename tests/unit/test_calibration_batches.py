"""Batches of similar-length texts: the same texts, far less padding, the sensitivity sample kept."""

from __future__ import annotations

import pytest

from optimize.calibration.batches import by_length
from optimize.calibration.corpus import calibration_texts
from optimize.calibration.source import HELD_BACK, CalibrationSource
from optimize.config import CalibrationConfig
from optimize.quantization.search import SENSITIVITY_TEXTS


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from optimize.exporter.resolve import embedded_model_path

    return AutoTokenizer.from_pretrained(str(embedded_model_path()))


def _padded_and_real(batches) -> tuple[int, int]:
    masks = [b["attention_mask"] for b in batches]
    return sum(m.size for m in masks), sum(int(m.sum()) for m in masks)


def test_by_length_orders_by_tokens_and_keeps_every_text(tokenizer):
    texts = ["a much longer sentence than the others here", "short", "mid length text", "tiny"]
    ordered = by_length(tokenizer, texts, seq_len=128)
    assert sorted(ordered) == sorted(texts)
    assert ordered == ["short", "tiny", "mid length text", "a much longer sentence than the others here"]  # ties keep order
    # truncation decides the length: past seq_len every text is as long as any other
    assert by_length(tokenizer, texts, seq_len=3) == texts
    assert by_length(tokenizer, [], seq_len=128) == []  # a fast tokenizer given nothing raises


def test_a_short_calibration_file_holds_back_fewer_texts_than_the_leading_sample(tokenizer, tmp_path):
    """100 lines: after parity's share, a third of the rest is held back (30), fewer than the
    SENSITIVITY_TEXTS (48) the int8 search ranks layers on; the rest of the held-back text is then empty."""
    lines = tmp_path / "calibration.txt"
    lines.write_text("\n".join(calibration_texts(None, 100)), encoding="utf-8")
    source = CalibrationSource(tokenizer, ("input_ids", "attention_mask", "token_type_ids"), CalibrationConfig(path=lines, size=512))
    stats_texts, held = source.counts()
    assert 0 < held < SENSITIVITY_TEXTS and stats_texts > held
    batches = source.held_back(leading=SENSITIVITY_TEXTS)
    assert sum(len(b["input_ids"]) for b in batches) == held
    assert source.held_back() and list(source.batches())


def test_held_back_batches_pad_little_and_keep_the_leading_sample(tokenizer):
    cfg = CalibrationConfig(size=512, batch_size=16, seq_len=128)
    source = CalibrationSource(tokenizer, ("input_ids", "attention_mask", "token_type_ids"), cfg)
    assert source.counts() == (512, HELD_BACK)
    held = calibration_texts(None, cfg.size + HELD_BACK)[-HELD_BACK:]
    batches = source.held_back(leading=SENSITIVITY_TEXTS)
    padded, real = _padded_and_real(batches)
    unsorted = [tokenizer(held[i : i + 16], padding="longest", truncation=True, max_length=128)["attention_mask"] for i in range(0, len(held), 16)]
    assert real == sum(sum(map(sum, m)) for m in unsorted)  # the same tokens
    assert padded < 0.6 * sum(len(m) * len(m[0]) for m in unsorted)
    # the leading batches are the first held-back texts (a sample of every length), not the shortest
    lead = SENSITIVITY_TEXTS // cfg.batch_size
    leading = tokenizer.batch_decode([row[mask.astype(bool)] for b in batches[:lead] for row, mask in zip(b["input_ids"], b["attention_mask"])], skip_special_tokens=True)
    want = tokenizer.batch_decode(tokenizer(held[:SENSITIVITY_TEXTS], truncation=True, max_length=128)["input_ids"], skip_special_tokens=True)
    assert sorted(leading) == sorted(want)
