"""The bundle folder as other runtimes take it, unchanged: a plain InferenceSession, Optimum's
ORTModel classes in transformers' pipelines, and Node.js (onnxruntime-node with the bundle's
tokenizer.json); each gives what optimize.load gives."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

import optimize
from side_envs import js_folder, node_tools, optimum_python

REPO_TESTS = __import__("pathlib").Path(__file__).resolve().parent.parent
TEXTS = ["a fine film", "Deployment compilers turn models into artifacts that run anywhere.", "x", "Héllo wörld, naïve café!"]


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_a_default_inference_session_gives_the_same_outputs(tiny_bundle, task):
    """What the manifest's session settings change, it records; without them the outputs stay
    within fp32 parity (the classifier's graph keeps the padded layout, where ONNX Runtime's
    default session fuses SkipLayerNormalization; the unpadded one is the very same graph)."""
    _, bundle = tiny_bundle(task)
    manifest = json.loads((bundle / "manifest.json").read_text())
    difference = manifest["session"]["default_session"]
    if task == "feature-extraction":
        assert difference["same_graph"] is True
    else:
        assert difference["same_graph"] is False and difference["ops_added"] == {"SkipLayerNormalization": 4}
    model = optimize.load(bundle)
    plain = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in model.runtime.batches(TEXTS, batch_size=2):
        for name, value in zip([o.name for o in plain.get_outputs()], plain.run(None, batch.feeds)):
            np.testing.assert_allclose(value, batch.outputs[name], atol=1e-5)


def _optimum(task: str, bundle, tmp_path) -> list:  # noqa: ANN001
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    done = subprocess.run(
        [str(optimum_python()), str(REPO_TESTS / "optimum" / "pipelines.py"), task, str(bundle), str(texts)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["transformers"].startswith("4.")  # Optimum's own transformers, not the suite's
    return result["outputs"]


def test_optimum_feature_extraction_pipeline_gives_optimize_loads_embeddings(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("feature-extraction")
    outputs = _optimum("feature-extraction", bundle, tmp_path)
    model = optimize.load(bundle)
    for theirs, mine in zip(outputs, model.token_embeddings(TEXTS)):
        np.testing.assert_allclose(np.array(theirs, dtype=np.float32)[0], mine, atol=1e-5)
    pooled = np.stack([np.array(t, dtype=np.float32)[0].mean(axis=0) for t in outputs])
    np.testing.assert_allclose(pooled, model.encode(TEXTS), atol=1e-5)


def test_optimum_text_classification_pipeline_gives_optimize_loads_labels(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("text-classification")
    outputs = _optimum("text-classification", bundle, tmp_path)
    mine = optimize.load(bundle).predict(TEXTS)
    assert [o[0]["label"] for o in outputs] == [m["label"] for m in mine]
    np.testing.assert_allclose([o[0]["score"] for o in outputs], [m["score"] for m in mine], atol=1e-5)


@pytest.mark.skipif(node_tools() is not None, reason=f"JavaScript side not runnable here: {node_tools()}")
def test_node_embeddings_match_python(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("feature-extraction")
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    folder = js_folder()
    done = subprocess.run(["node", "embed.mjs", str(bundle), str(texts)], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.array(json.loads(done.stdout), dtype=np.float32)
    np.testing.assert_allclose(theirs, optimize.load(bundle).encode(TEXTS), atol=1e-4)
