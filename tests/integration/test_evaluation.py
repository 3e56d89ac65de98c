"""`optimize eval` and the accuracy gate on export, on a tiny real classifier and labelled rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models
from cli_helpers import assert_one_line_error, optimize
from optimize.calibration.corpus import calibration_texts, held_out_texts
from optimize.evaluation import accuracy_drop, label_ids
from optimize.errors import InputError
from optimize.exporter import resolve


def _rows(folder: Path, path: Path, count: int = 60, flip_every: int = 0, near_ties: bool = False) -> list[int]:
    """A CSV of held-out texts labelled with the PyTorch model's own predictions (every
    ``flip_every``-th label changed), so the source model's accuracy is known exactly.
    ``near_ties``: the texts whose two best logits are closest, which any rounding may flip."""
    loaded = resolve(str(folder))
    texts = list(held_out_texts()[: count * 5 if near_ties else count])
    with torch.inference_mode():
        encoded = loaded.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        logits = loaded.module(**encoded).logits
    if near_ties:
        top = logits.topk(2, dim=-1).values
        closest = (top[:, 0] - top[:, 1]).argsort()[:count].tolist()
        texts, logits = [texts[i] for i in closest], logits[closest]
    predicted = logits.argmax(-1).tolist()
    labels = [(p + 1) % 3 if flip_every and i % flip_every == 0 else p for i, p in enumerate(predicted)]
    names = loaded.module.config.id2label
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(texts, labels):
            writer.writerow([text, names[label]])
    return labels


@pytest.fixture(scope="module")
def classifier_bundle(tiny_model_dir, tmp_path_factory):
    from optimize.api import export_model
    from optimize.config import ExportConfig, ExportJob, ParityConfig, SpeedCheckConfig

    out = tmp_path_factory.mktemp("eval") / "clf"
    folder = tiny_model_dir("bert", classification=True)
    export_model(ExportJob(model=str(folder), target="ort-fp32", output=out, export=ExportConfig(task="text-classification", seq_len=64),
                           parity=ParityConfig(size=32, unseen_size=32, seq_len=64), speed=SpeedCheckConfig(enabled=False)))
    return folder, out


def test_eval_prints_both_reports_and_the_source_accuracy_is_exact(classifier_bundle, tmp_path):
    folder, bundle = classifier_bundle
    data = tmp_path / "rows.csv"
    _rows(folder, data, flip_every=4)  # the source model is right on exactly 3 rows in 4
    result = optimize("eval", str(bundle), "--data", str(data), "--json", str(tmp_path / "report.json"))
    assert result.code == 0, result.stderr
    assert "classification report" in result.stdout and "macro avg" in result.stdout and "weighted avg" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"] == 60
    assert report["source"]["accuracy"] == pytest.approx(45 / 60)
    assert report["artifact"]["accuracy"] == pytest.approx(report["source"]["accuracy"])  # an fp32 artifact
    assert report["agreement"] == 1.0 and report["accuracy_drop"] == 0.0
    assert sum(map(sum, report["source"]["confusion"])) == 60
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_eval_names_a_label_the_model_does_not_know(classifier_bundle, tmp_path):
    folder, bundle = classifier_bundle
    data = tmp_path / "rows.csv"
    data.write_text("text,label\na fine film,LABEL_1\na dull film,sarcastic\n")
    assert_one_line_error(optimize("eval", str(bundle), "--data", str(data)), "'sarcastic'", "LABEL_0", code=2)


def test_eval_names_a_missing_column(classifier_bundle, tmp_path):
    _, bundle = classifier_bundle
    data = tmp_path / "rows.jsonl"
    data.write_text('{"sentence": "a fine film", "label": 1}\n')
    assert_one_line_error(optimize("eval", str(bundle), "--data", str(data)), "no column 'text'", "sentence", code=2)


@pytest.mark.slow  # minutes on a busy 2-core machine: the full suite only (keeps -m 'not slow' under 5 minutes)
def test_accuracy_gate_refuses_a_drop_past_the_limit(tmp_path):
    # weights large enough that the layers matter, so pruning 60% changes some predictions
    folder = tiny_models.build("bert", tmp_path / "model", classification=True, init_std=0.3)
    data = tmp_path / "rows.csv"
    _rows(folder, data, count=80, near_ties=True)  # labels = the source model's predictions: 100% right
    out = tmp_path / "pruned"
    texts = tmp_path / "calibration.txt"  # a short file: the fit reads every calibration text up to 8,192
    texts.write_text("\n".join(calibration_texts(None, 96)), encoding="utf-8")
    result = optimize(
        "export", str(folder), "--task", "text-classification", "--prune", "0.6", "--prune-min-cosine", "0.01",
        "--prune-min-agreement", "0", "--eval-data", str(data), "--max-accuracy-drop", "0.1", "--output", str(out),
        "--no-speed", "--seq-len", "64", "--parity-size", "32", "--unseen-size", "32", "--calibration", str(texts),
    )
    line = assert_one_line_error(result, "loses", "accuracy points", "--max-accuracy-drop 0.1", code=6)
    assert "1.0000 ->" in line  # the source model's accuracy on its own predictions
    assert not out.exists()


@pytest.mark.slow
def test_accuracy_gate_passes_and_records_the_figures(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("bert", classification=True)
    data = tmp_path / "rows.csv"
    _rows(folder, data, count=40)
    out = tmp_path / "fp32"
    result = optimize(
        "export", str(folder), "--task", "text-classification", "--eval-data", str(data), "--max-accuracy-drop", "0.5",
        "--output", str(out), "--no-speed", "--seq-len", "64", "--parity-size", "32", "--unseen-size", "32",
    )
    assert result.code == 0, result.stderr
    evaluation = json.loads((out / "manifest.json").read_text())["evaluation"]
    assert evaluation["rows"] == 40 and evaluation["accuracy_drop"] == 0.0 and evaluation["max_accuracy_drop"] == 0.5


def test_label_ids_take_names_ids_and_case():
    id2label = {0: "negative", 1: "positive"}
    assert label_ids(("negative", "1", "Positive"), id2label, Path("x.csv")).tolist() == [0, 1, 1]
    with pytest.raises(InputError, match="'neutral'"):
        label_ids(("neutral",), id2label, Path("x.csv"))


def test_accuracy_drop_interval_brackets_the_drop():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    source = truth.copy()
    artifact = truth.copy()
    artifact[:20] = 1 - artifact[:20]  # 20 of 400 rows wrong: 5 points lost
    drop, (low, high) = accuracy_drop(truth, source, artifact)
    assert drop == pytest.approx(5.0)
    assert low < drop < high and low > 2.0 and high < 8.0
