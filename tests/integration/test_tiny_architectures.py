"""End to end on tiny random-weight bert, distilbert and roberta: export, passes, parity, bundle."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from cli_helpers import optimize
from optimize.api import export_model

EXPECTED_INPUTS = {
    "bert": ["input_ids", "attention_mask", "token_type_ids"],
    "distilbert": ["input_ids", "attention_mask"],  # DistilBERT has no token_type_ids
    "roberta": ["input_ids", "attention_mask"],  # RoBERTa's tokenizer produces none either
}


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_feature_extraction_bundle(kind, tiny_model_dir, quick_job, tmp_path):
    folder = tiny_model_dir(kind)
    outcome = export_model(quick_job(str(folder), tmp_path / "out"))

    assert outcome.parity.cosine_min >= 0.99999 and outcome.parity.max_abs_error < 1e-3, outcome.parity.summary()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["io"]["inputs"]] == EXPECTED_INPUTS[kind]
    assert all(i["dtype"] == "INT64" for i in manifest["io"]["inputs"])
    assert manifest["io"]["outputs"][0]["name"] == "last_hidden_state"
    assert manifest["io"]["outputs"][0]["dtype"] == "FLOAT"

    # the bundle runs in plain onnxruntime at shapes it was never exported at
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == EXPECTED_INPUTS[kind]
    for batch, sequence in [(1, 3), (4, 33), (2, 64)]:
        feeds = {n: np.ones((batch, sequence), np.int64) for n in EXPECTED_INPUTS[kind]}
        (hidden,) = session.run(None, feeds)
        assert hidden.shape == (batch, sequence, 64)
    # self-sufficient: tokenizer and config travel with the model
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    assert (tmp_path / "out" / "config.json").is_file()


def test_bert_fusions_reach_the_graph(tiny_model_dir, quick_job, tmp_path):
    outcome = export_model(quick_job(str(tiny_model_dir("bert")), tmp_path / "out"))
    ops = outcome.manifest["passes"]["final_ops"]
    # fused, then the unpad pass moves Q/K/V and the attention onto the real tokens: per layer an
    # If whose branches hold a mask-free MultiHeadAttention (one sequence, or a Loop over them)
    inner = outcome.manifest["passes"]["final_ops_in_subgraphs"]
    assert ops["If"] == 2 and inner["com.microsoft::MultiHeadAttention"] == 4 and "com.microsoft::Attention" not in ops, (ops, inner)
    assert ops["com.microsoft::BiasGelu"] == 2
    fusion = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "ort-fusion")
    assert fusion["stats"]["missing"] == {}
    # the exporter's attention-bias subgraph is gone: Attention reads the 0/1 mask directly
    mask = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "attention-mask-index")
    assert mask["stats"]["converted"] == 2
    assert "GatherND" not in ops and "Expand" not in ops  # (not Where: the unpad pass computes its row index with one)
    # each block's output bias rides in the LayerNorm before it: no bias Add left on the residuals
    fold = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "residual-bias-fold")
    assert fold["stats"]["folded"] == 4


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_text_classification_logits_parity(kind, tiny_model_dir, quick_job, tmp_path):
    folder = tiny_model_dir(kind, classification=True)
    outcome = export_model(quick_job(str(folder), tmp_path / "out"))
    assert outcome.manifest["task"] == "text-classification"  # taken from the checkpoint
    assert outcome.manifest["io"]["outputs"][0]["name"] == "logits"
    assert outcome.parity.label_agreement == 1.0
    assert outcome.parity.max_abs_error < 1e-3


def test_fused_attention_flag_keeps_onnx_runtimes_fused_attention(tiny_model_dir, tmp_path):
    """`--fused-attention` reaches the unpad pass: the fused op stays, on the padded layout."""
    out = tmp_path / "fused"
    result = optimize("export", str(tiny_model_dir("bert")), "--output", str(out), "--no-speed", "--seq-len", "64",
                      "--parity-size", "16", "--unseen-size", "32", "--fused-attention")
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    ops = manifest["passes"]["final_ops"]
    assert ops["com.microsoft::Attention"] == 2 and "com.microsoft::MultiHeadAttention" not in ops, ops
    unpad = next(p for p in manifest["passes"]["passes"] if p["name"] == "unpad")
    assert unpad["stats"]["attention"] == "fused, padded (off)"
