"""ort-fp16's acceptance on the embedded all-MiniLM-L6-v2, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from cli_helpers import optimize
from graph_checks import cast_chains

pytestmark = pytest.mark.slow


def test_fp16_bundle_on_a_thousand_real_sentences(tmp_path, rotten_tomatoes_test_texts):
    sentences = rotten_tomatoes_test_texts[:1000]
    parity_file = tmp_path / "sentences.txt"
    parity_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    out = tmp_path / "fp16"
    result = optimize(
        "export", "bert", "--target", "ort-fp16", "--output", str(out), "--no-speed",
        "--parity-text", str(parity_file), "--parity-size", "1000",
    )
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["samples"] >= 990  # a few snippets repeat
    assert parity["cosine_min"] >= 0.9995 and parity["neighbour_agreement"] >= 0.99
    assert parity["nonfinite"] == 0
    assert manifest["files"]["model.onnx"]["bytes"] <= 47_000_000  # 52% of the fp32 file
    assert cast_chains(out / "model.onnx") == 0

    # and no NaN/Inf at mixed lengths, batch by batch, in plain onnxruntime
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for start in range(0, len(sentences), 50):
        encoded = tokenizer(sentences[start : start + 50], padding=True, return_tensors="np")
        (hidden,) = session.run(None, {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
        assert hidden.dtype == np.float32 and np.isfinite(hidden).all()
