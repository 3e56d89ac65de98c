import pytest

from optimize.calibration import corpus
from optimize.errors import InputError


def test_held_out_text_never_overlaps_calibration_text():
    held_out = set(corpus.held_out_texts())
    calibration = set(corpus.mixed_lengths(corpus.calibration_paragraphs()))
    assert len(held_out) > 400 and len(calibration) > 1500
    assert not held_out & calibration


def test_texts_span_short_and_long_inputs():
    lengths = [len(t.split()) for t in corpus.parity_texts(None, 96)]
    assert min(lengths) < 10 and max(lengths) > 60


def test_text_file_is_streamed_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first text\n\n  second   text \n")
    assert corpus.calibration_texts(path, 10) == ["first text", "second text"]


def test_empty_text_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n")
    with pytest.raises(InputError, match="holds no text"):
        corpus.calibration_texts(path, 10)


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok line\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8 .line 2"):
        corpus.calibration_texts(path, 10)


def test_the_builtin_corpus_balances_four_domains_and_keeps_the_unseen_one_apart():
    calibration = corpus.builtin_calibration_texts()
    assert len(calibration) > 12_000
    first = calibration[:400]  # any prefix is balanced: each domain in turn
    for domain in corpus.CALIBRATION_DOMAINS:
        mine = set(corpus.mixed_lengths(corpus.calibration_paragraphs(domain)))
        assert 80 <= sum(t in mine for t in first) <= 120, domain.name
    unseen = set(corpus.unseen_domain_texts())
    assert len(unseen) == 600
    assert not unseen & set(calibration) and not unseen & set(corpus.held_out_texts())
