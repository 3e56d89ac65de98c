"""Judged by the task: an artifact and its source model on the user's labelled rows, side by side.

``evaluate(bundle, rows)`` runs the bundle in ONNX Runtime (with the session settings its manifest
records) and the PyTorch model it was compiled from on every row, and reports for both what
scikit-learn's ``classification_report`` reports (per class precision, recall, F1, support;
accuracy, macro and weighted F1), the confusion matrices, how often the two agree, and the
accuracy the artifact lost with a paired bootstrap 95% interval.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.errors import InputError
from optimize.textdata import Rows

#: resamples of the paired bootstrap for the interval of the accuracy difference
BOOTSTRAP = 2000


@dataclass(frozen=True)
class ClassReport:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ModelReport:
    accuracy: float
    macro_f1: float
    weighted_f1: float
    classes: dict[str, ClassReport]
    confusion: list[list[int]]  # rows: true label, columns: predicted, in label order


@dataclass(frozen=True)
class EvalReport:
    rows: int
    labels: list[str]
    source: ModelReport  # the PyTorch model the bundle was compiled from
    artifact: ModelReport
    agreement: float  # share of rows where both predict the same label
    accuracy_drop: float  # source minus artifact, in accuracy points (percent)
    drop_interval: tuple[float, float]  # paired bootstrap 95% interval of the drop, in points
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_ids(labels: tuple[str, ...], id2label: dict[int, str], path: Path) -> np.ndarray:
    """Labels as written in the file (names or ids) -> ids of the model's head; an unknown label is one line."""
    by_name = {name: i for i, name in id2label.items()}
    by_folded = {name.lower(): i for i, name in id2label.items()}
    ids = []
    for value in labels:
        if value in by_name:
            ids.append(by_name[value])
        elif value.lower() in by_folded:
            ids.append(by_folded[value.lower()])
        elif value.lstrip("-").isdigit() and int(value) in id2label:
            ids.append(int(value))
        else:
            known = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items()))
            raise InputError(f"label {value!r} in {path} is not one the model knows ({known})", "use the model's label names or ids")
    return np.array(ids, dtype=np.int64)


def model_report(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> ModelReport:
    from sklearn.metrics import classification_report, confusion_matrix

    ids = list(range(len(names)))
    table = classification_report(truth, predicted, labels=ids, target_names=names, output_dict=True, zero_division=0)
    classes = {
        name: ClassReport(float(table[name]["precision"]), float(table[name]["recall"]), float(table[name]["f1-score"]), int(table[name]["support"]))
        for name in names
    }
    return ModelReport(
        accuracy=float(np.mean(truth == predicted)),
        macro_f1=float(table["macro avg"]["f1-score"]),
        weighted_f1=float(table["weighted avg"]["f1-score"]),
        classes=classes,
        confusion=confusion_matrix(truth, predicted, labels=ids).tolist(),
    )


def accuracy_drop(truth: np.ndarray, source: np.ndarray, artifact: np.ndarray, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Source accuracy minus artifact accuracy in points, and its paired bootstrap 95% interval."""
    right_source = (source == truth).astype(np.float64)
    right_artifact = (artifact == truth).astype(np.float64)
    difference = right_source - right_artifact
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(truth), size=(BOOTSTRAP, len(truth)))
    drops = difference[samples].mean(axis=1) * 100
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(difference.mean() * 100), (float(low), float(high))


def predict(runner: Any, tokenizer: Any, input_names: tuple[str, ...], texts: tuple[str, ...], seq_len: int, output: str = "logits", batch_size: int = 32) -> np.ndarray:
    """Logits of every text, in batches padded to their longest member (sorted by length, restored)."""
    from optimize.calibration.batches import token_batches

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits: list[np.ndarray] = []
    for feeds in token_batches(tokenizer, [texts[i] for i in order], input_names, batch_size=batch_size, seq_len=seq_len):
        logits.append(runner.infer(feeds)[output].astype(np.float64))
    stacked = np.concatenate(logits)
    restored = np.empty_like(stacked)
    restored[order] = stacked
    return restored


def compare_on_rows(truth: np.ndarray, source_logits: np.ndarray, artifact_logits: np.ndarray, names: list[str]) -> EvalReport:
    source, artifact = source_logits.argmax(axis=1), artifact_logits.argmax(axis=1)
    drop, interval = accuracy_drop(truth, source, artifact)
    return EvalReport(
        rows=len(truth),
        labels=names,
        source=model_report(truth, source, names),
        artifact=model_report(truth, artifact, names),
        agreement=float(np.mean(source == artifact)),
        accuracy_drop=drop,
        drop_interval=interval,
    )


def evaluate(bundle_path: Path, rows: Rows, batch_size: int = 32) -> EvalReport:
    """`optimize eval`: the bundle and its source model on every labelled row."""
    from transformers import AutoTokenizer

    from optimize.bundle import read_bundle
    from optimize.config import SessionConfig
    from optimize.exporter import resolve
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.torch_ref import TorchRunner

    bundle = read_bundle(bundle_path)
    manifest = bundle.manifest
    if manifest.get("task") != "text-classification":
        raise InputError(
            f"bundle {bundle_path} is a {manifest.get('task')} bundle; `optimize eval` reports classification accuracy",
            "export the classifier with --task text-classification",
        )
    if manifest.get("runtime") != "onnxruntime":
        raise InputError(f"bundle {bundle_path} is for {manifest.get('target')}, evaluated here in ONNX Runtime only", "evaluate an ort-* bundle")
    if rows.labels is None:
        raise InputError(f"{rows.path} has no labels", "pass --label-column naming the column of labels")
    config = json.loads((bundle.path / "config.json").read_text())
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()} or {i: str(i) for i in range(int(config.get("num_labels", 2)))}
    truth = label_ids(rows.labels, id2label, rows.path)
    names = [id2label[i] for i in sorted(id2label)]

    source = resolve(manifest["source"]["reference"], "text-classification")
    notes = []
    if source.source_hash != manifest["source"]["sha256"]:
        notes.append(f"the source model at {manifest['source']['reference']} changed since the export (its hash differs)")
    session = manifest.get("session", {})
    runner = OrtRunner(
        bundle.model_path,
        SessionConfig(optimization_level=session.get("optimization_level", "all"), disabled_optimizers=tuple(session.get("disabled_optimizers", ()))),
    )
    tokenizer = AutoTokenizer.from_pretrained(bundle.path)
    inputs = tuple(i["name"] for i in manifest["io"]["inputs"])
    seq_len = min(int(manifest["source"]["max_sequence"]), 512)
    artifact_logits = predict(runner, tokenizer, inputs, rows.texts, seq_len, batch_size=batch_size)
    source_logits = predict(TorchRunner(source), source.tokenizer, source.input_names, rows.texts, seq_len, batch_size=batch_size)
    report = compare_on_rows(truth, source_logits, artifact_logits, names)
    report.notes.extend(notes)
    return report


def confusion_png(report: EvalReport, path: Path) -> None:
    """Both confusion matrices side by side, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(report.labels), 2.5 + 0.6 * len(report.labels)))
    for axis, (title, model) in zip(axes, (("source (PyTorch)", report.source), ("artifact", report.artifact))):
        matrix = np.array(model.confusion)
        axis.imshow(matrix, cmap="Blues")
        axis.set_title(f"{title}: accuracy {model.accuracy:.4f}")
        axis.set_xticks(range(len(report.labels)), report.labels, rotation=45, ha="right")
        axis.set_yticks(range(len(report.labels)), report.labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
