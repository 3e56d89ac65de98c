"""--with-tokenizer: a graph that takes raw text. Its token ids are the Python tokenizer's on the
parity texts (truncation and padding included), its outputs the tokenized bundle's, on every
ort-* target; TensorRT targets and span tasks refuse it in one line."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import optimize
from cli_helpers import assert_one_line_error, optimize as run_optimize

extensions = pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions (the `tokenizer` extra) is not installed")

TEXTS = ["some text", "more", "Héllo wörld, naïve café! Don't  stop.", "Deployment compilers turn models into artifacts " * 12]


def _session(path) -> ort.InferenceSession:  # noqa: ANN001
    options = ort.SessionOptions()
    options.register_custom_ops_library(extensions.get_library_path())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_token_ids_equal_the_python_tokenizers_on_the_parity_texts(tiny_model_dir):
    """The tokenizer graph alone, on the held-out and unseen-domain parity texts in batches of 16:
    ids, mask and token types equal the Python tokenizer's with truncation at 64 and padding to
    each batch's longest."""
    from transformers import AutoTokenizer

    from optimize.calibration.corpus import parity_sets
    from optimize.exporter.text_input import tokenizer_graph

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("bert"))
    names = ("input_ids", "attention_mask", "token_type_ids")
    session = _session_of(tokenizer_graph(tokenizer, 64, 18, names))
    texts = [t for text_set in parity_sets(None, None, 256, 600, "text") for t in text_set.texts] + TEXTS
    truncated = 0
    for start in range(0, len(texts), 16):
        batch = texts[start : start + 16]
        got = dict(zip(names, session.run(list(names), {"text": np.array(batch, dtype=object)})))
        want = tokenizer(batch, padding="longest", truncation=True, max_length=64, return_tensors="np")
        for name in names:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} of texts {start}..{start + 15}")
        truncated += int((want["attention_mask"].sum(1) == 64).sum())
    assert len(texts) > 800 and truncated > 50  # truncation was exercised, not only padding


def _session_of(model) -> ort.InferenceSession:  # noqa: ANN001
    options = ort.SessionOptions()
    options.register_custom_ops_library(extensions.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("target", [pytest.param(t, marks=pytest.mark.slow) for t in ("ort-fp32", "ort-int8", "ort-fp16")])
def test_raw_text_bundle_matches_the_tokenized_bundle(tiny_bundle, tmp_path, target):
    source, tokenized = tiny_bundle("feature-extraction")
    if target != "ort-fp32":  # the tokenized bundle of the same target to hold it against
        tokenized = tmp_path / "tokenized"
        done = run_optimize("export", str(source), "--target", target, "--output", str(tokenized), "--seq-len", "64", "--no-speed", "--parity-size", "24", "--unseen-size", "24")
        assert done.code == 0, done.stderr
    raw = tmp_path / "raw"
    done = run_optimize("export", str(source), "--target", target, "--with-tokenizer", "--output", str(raw), "--seq-len", "64", "--no-speed", "--parity-size", "24", "--unseen-size", "24")
    assert done.code == 0, done.stderr
    assert "parity:" in done.stdout
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["io"]["inputs"] == [{"name": "text", "dtype": "STRING", "shape": ["batch"]}]
    assert manifest["session"]["custom_ops"] == ["onnxruntime-extensions"]
    assert manifest["tokenizer_in_graph"]["max_length"] == 64

    outputs = ["last_hidden_state", "attention_mask"]
    got = dict(zip(outputs, _session(raw / "model.onnx").run(outputs, {"text": np.array(TEXTS)})))
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(tokenized)(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    plain = ort.InferenceSession(str(tokenized / "model.onnx"), providers=["CPUExecutionProvider"])
    want = plain.run(["last_hidden_state"], {n: encoded[n].astype(np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")})[0]
    np.testing.assert_array_equal(got["attention_mask"], encoded["attention_mask"])
    np.testing.assert_allclose(got["last_hidden_state"], want, atol=1e-5)

    if target == "ort-fp32":  # the Python API and the command take raw-text bundles too
        embeddings = optimize.load(raw).encode(TEXTS, batch_size=3)
        np.testing.assert_allclose(embeddings, optimize.load(tokenized, max_length=64).encode(TEXTS), atol=1e-5)
        done = run_optimize("run", str(raw), "some text")
        assert done.code == 0, done.stderr
        assert len(json.loads(done.stdout)["embedding"]) == 64
        # timing and evaluation feed tokens: they refuse a raw-text bundle in one line
        assert_one_line_error(run_optimize("bench", str(raw), "--baseline", "none", "--out", str(tmp_path / "bench")), "takes raw text", code=2)


def test_tensorrt_targets_and_span_tasks_refuse_it_in_one_line(tiny_bundle, tmp_path):
    source, _ = tiny_bundle("feature-extraction")
    for target in ("trt-fp16", "trt-int8"):
        done = run_optimize("export", str(source), "--target", target, "--with-tokenizer", "--output", str(tmp_path / target))
        assert_one_line_error(done, "--with-tokenizer", "TensorRT has no string ops", code=2)
    token_source, _ = tiny_bundle("token-classification")
    done = run_optimize("export", str(token_source), "--with-tokenizer", "--output", str(tmp_path / "tok"), "--no-speed")
    assert_one_line_error(done, "--with-tokenizer cannot serve this model", "character spans", code=2)
    assert not (tmp_path / "tok").exists()
