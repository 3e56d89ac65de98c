"""The embedded all-MiniLM-L6-v2 as a sentence-embedding bundle, through the command, against the
sentence-transformers package's own ``encode`` on 500 texts."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoTokenizer

from cli_helpers import optimize
from optimize.calibration.corpus import calibration_texts, parity_texts
from optimize.exporter.resolve import embedded_model_path

pytestmark = pytest.mark.slow


def test_sentence_embedding_bundle_equals_sentence_transformers_encode(tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "se"
    done = optimize("export", "bert", "--task", "sentence-embedding", "--target", "ort-fp32", "--output", str(out), "--no-speed",
                    "--parity-size", "64", "--unseen-size", "100")  # this test compares 500 texts itself
    assert done.code == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["sentence_embedding", "token_embeddings"]
    assert manifest["source"]["sentence_pipeline"] == {"modes": ["mean"], "normalize": True, "max_seq_length": 256}

    texts = list(dict.fromkeys([*parity_texts(None, 250), *calibration_texts(None, 400)]))[:500]
    assert len(texts) == 500
    want = SentenceTransformer(str(embedded_model_path()), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)

    tokenizer = AutoTokenizer.from_pretrained(out)  # the bundle's: truncates at 256 as encode does
    assert tokenizer.model_max_length == 256
    session = ort.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"], disabled_optimizers=manifest["session"]["disabled_optimizers"]
    )
    names = [i.name for i in session.get_inputs()]
    got = []
    for start in range(0, len(texts), 32):
        encoded = tokenizer(texts[start : start + 32], padding=True, truncation=True, return_tensors="np")
        got.append(session.run(["sentence_embedding"], {n: encoded[n].astype(np.int64) for n in names})[0])
    got = np.concatenate(got)
    assert got.shape == (500, 384) and got.dtype == np.float32
    cosines = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.mean() >= 0.99999 and cosines.min() >= 0.99999, (cosines.mean(), cosines.min())


def test_feature_extraction_stays_the_default_and_hints_at_sentence_embedding(embedded_fp32_export):
    out, done = embedded_fp32_export
    assert "--task sentence-embedding" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "feature-extraction"
