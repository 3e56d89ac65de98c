"""The backbone's acceptance, end to end on the embedded all-MiniLM-L6-v2, through the CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cli_helpers import assert_one_line_error, optimize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_bundle(embedded_fp32_export):
    return embedded_fp32_export


def test_export_prints_model_parity_speed_and_bundle(fp32_bundle):
    out, result = fp32_bundle
    assert "embedded BERT all-MiniLM-L6-v2" in result.stderr  # says which model it used
    for prefix in ("export:", "passes:", "parity:", "speed:", "bundle:"):
        assert any(line.startswith(prefix) for line in result.stdout.splitlines()), prefix
    assert {"model.onnx", "manifest.json", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}


def test_artifact_runs_in_plain_onnxruntime_at_every_shape(fp32_bundle):
    out, _ = fp32_bundle
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    rng = np.random.default_rng(0)
    for batch, sequence in [(1, 8), (3, 77), (32, 128), (2, 512)]:
        feeds = {
            "input_ids": rng.integers(1000, 30000, (batch, sequence)).astype(np.int64),
            "attention_mask": np.ones((batch, sequence), np.int64),
            "token_type_ids": np.zeros((batch, sequence), np.int64),
        }
        (hidden,) = session.run(None, feeds)
        assert hidden.shape == (batch, sequence, 384) and hidden.dtype == np.float32
        assert np.isfinite(hidden).all()


def test_parity_and_fusions_meet_the_acceptance(fp32_bundle):
    out, _ = fp32_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["cosine_min"] >= 0.99999
    assert manifest["parity"]["samples"] >= 64
    ops = Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    inner = manifest["passes"]["final_ops_in_subgraphs"]
    # fused, then Q/K/V and the attention on the real tokens, per sequence (unpad_attention.py)
    assert ops["If"] == 6 and inner["com.microsoft::MultiHeadAttention"] == 12 and not ops["Attention"], (ops, inner)
    assert ops["BiasGelu"] == 6
    assert manifest["speed"]["speedup"] > 0  # measured and recorded; benchmarks/ judges the figure
    assert manifest["source"]["sha256"] and manifest["hardware"]["cpu"]


def test_inspect_reads_the_bundle(fp32_bundle):
    out, _ = fp32_bundle
    result = optimize("inspect", str(out))
    assert result.code == 0, result.stderr
    assert "target: ort-fp32" in result.stdout
    assert "If 6" in result.stdout and "com.microsoft::MultiHeadAttention 12" in result.stdout


def test_exporting_again_without_force_is_refused(fp32_bundle):
    out, _ = fp32_bundle
    before = (out / "manifest.json").read_bytes()
    result = optimize("export", "bert", "--target", "ort-fp32", "--output", str(out))
    assert_one_line_error(result, "already exists", "--force", code=7)
    assert (out / "manifest.json").read_bytes() == before


def test_text_classification_export_has_logits_parity(tmp_path):
    out = tmp_path / "c"
    result = optimize(
        "export", "bert", "--task", "text-classification", "--target", "ort-fp32", "--output", str(out), "--no-speed",
        "--parity-size", "64", "--unseen-size", "100",
    )
    assert result.code == 0, result.stderr
    assert "initialised randomly" in result.stderr  # the embedded BERT has no classifier head
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["io"]["outputs"][0]["name"] == "logits"
    assert manifest["parity"]["label_agreement"] == 1.0
