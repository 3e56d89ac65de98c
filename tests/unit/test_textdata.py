"""User text files: plain lines, CSV, TSV and JSON lines, and a one-line error for each mistake."""

import pytest

from optimize.calibration import corpus
from optimize.errors import InputError
from optimize.textdata import read_rows, read_texts


def test_csv_tsv_and_jsonl_give_the_same_rows(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"a fine, long film",positive\nflat,negative\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text("text\tlabel\na fine, long film\tpositive\nflat\tnegative\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "a fine, long film", "label": "positive"}\n\n{"text": "flat", "label": "negative"}\n')
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        rows = read_rows(tmp_path / name, label_column="label")
        assert rows.texts == ("a fine, long film", "flat") and rows.labels == ("positive", "negative"), name


def test_a_missing_column_names_the_columns_there(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("sentence,label\nok,1\n")
    with pytest.raises(InputError, match=r"no column 'text' .*columns: sentence, label"):
        read_rows(path, label_column="label")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"text": "ok", "label": "a"}\nnot json\n', "line 2 is not JSON"),
        ("a.jsonl", '["a list"]\n', "not a JSON object"),
        ("a.csv", "text,label\n,positive\n", "empty 'text'"),
        ("a.csv", "text,label\nfine,\n", "has no 'label'"),
        ("a.csv", "text,label\n", "holds no rows"),
    ],
)
def test_bad_rows_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_rows(path, label_column="label")


def test_a_plain_file_has_no_labels(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n")
    assert list(read_texts(path)) == ["one", "two"]
    with pytest.raises(InputError, match="plain text and has no label column"):
        read_rows(path, label_column="label")


def test_a_calibration_csv_gives_up_a_fifth_for_parity(tmp_path):
    path = tmp_path / "train.csv"
    texts = [f"review number {i} of a film" for i in range(200)]
    path.write_text("text,label\n" + "".join(f"{t},positive\n" for t in texts))
    calibration = corpus.calibration_texts(path, 1000)
    sets = corpus.parity_sets(None, path, 256, 600)
    held = set(sets[0].texts)
    assert 20 < len(held) < 80 and not held & set(calibration)  # one text in five, by hash
    assert held | set(calibration) == set(texts)
    assert sets[0].label == "held out from --calibration train.csv"
    assert sets[1].key == "unseen_domain" and len(sets[1].texts) == 600


def test_the_unseen_domain_leaves_out_what_the_user_calibrated_on(tmp_path):
    path = tmp_path / "reviews.txt"
    shipped = corpus.unseen_domain_texts()
    path.write_text("\n".join(shipped[:400]) + "\n")
    unseen = corpus.parity_sets(None, path, 256, 600)[1]
    assert not set(unseen.texts) & set(corpus.calibration_texts(path, 1000))
    assert "not in --calibration" in unseen.label
