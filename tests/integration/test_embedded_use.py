"""Using the embedded all-MiniLM-L6-v2's bundles as a new user would (issue 16's acceptance):
optimize.load against sentence-transformers, Optimum's pipeline and Node.js against optimize.load,
and the raw-text graph against the tokenized bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import optimize
from cli_helpers import optimize as run_optimize
from side_envs import js_folder, node_tools, optimum_python

pytestmark = pytest.mark.slow

REPO_TESTS = __import__("pathlib").Path(__file__).resolve().parent.parent
#: parity on fewer texts than the default: these bundles are judged here by what they are used for
QUICK = ("--no-speed", "--parity-size", "64", "--unseen-size", "100")


def _texts(n: int) -> list[str]:
    from optimize.calibration.corpus import calibration_texts, parity_texts

    texts = list(dict.fromkeys([*parity_texts(None, 250), *calibration_texts(None, 400)]))[:n]
    assert len(texts) == n
    return texts


@pytest.fixture(scope="module")
def fp32_bundle(embedded_fp32_export):
    return embedded_fp32_export[0]


def test_int8_sentence_bundle_encodes_as_sentence_transformers_does(embedded_int8_sentence_export):
    from sentence_transformers import SentenceTransformer

    from optimize.exporter.resolve import embedded_model_path

    out, _ = embedded_int8_sentence_export
    shown = subprocess.run(
        [sys.executable, "-c", f"import optimize; m = optimize.load({str(out)!r}); print(m.encode(['a', 'b c']).shape)"],
        capture_output=True, text=True, timeout=300,
    )
    assert shown.stdout.strip() == "(2, 384)", shown.stderr

    texts = _texts(500)
    want = SentenceTransformer(str(embedded_model_path()), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
    got = optimize.load(out).encode(texts)
    cosines = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.99, (cosines.mean(), cosines.min())


def test_optimum_pipeline_gives_optimize_loads_embeddings(fp32_bundle, tmp_path):
    texts = _texts(40)
    listed = tmp_path / "texts.json"
    listed.write_text(json.dumps(texts))
    done = subprocess.run(
        [str(optimum_python()), str(REPO_TESTS / "optimum" / "pipelines.py"), "feature-extraction", str(fp32_bundle), str(listed)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])["outputs"]
    model = optimize.load(fp32_bundle)
    worst = max(float(np.abs(np.array(t, dtype=np.float32)[0] - mine).max()) for t, mine in zip(theirs, model.token_embeddings(texts)))
    assert worst <= 1e-5, worst


@pytest.mark.skipif(node_tools() is not None, reason=f"JavaScript side not runnable here: {node_tools()}")
def test_node_gives_pythons_embeddings(fp32_bundle, tmp_path):
    texts = _texts(40)
    listed = tmp_path / "texts.json"
    listed.write_text(json.dumps(texts))
    done = subprocess.run(["node", "embed.mjs", str(fp32_bundle), str(listed)], cwd=js_folder(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.array(json.loads(done.stdout), dtype=np.float32)
    assert np.abs(theirs - optimize.load(fp32_bundle).encode(texts)).max() <= 1e-4


def test_raw_text_graph_matches_the_tokenized_bundle(fp32_bundle, tmp_path):
    extensions = pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions (the `tokenizer` extra) is not installed")
    from transformers import AutoTokenizer

    raw = tmp_path / "raw"
    done = run_optimize("export", "bert", "--target", "ort-fp32", "--with-tokenizer", "--output", str(raw), *QUICK)
    assert done.code == 0, done.stderr
    options = ort.SessionOptions()
    options.register_custom_ops_library(extensions.get_library_path())
    session = ort.InferenceSession(str(raw / "model.onnx"), options, providers=["CPUExecutionProvider"])
    texts = ["some text", "more", *_texts(30)]
    got = session.run(["last_hidden_state"], {"text": np.array(texts)})[0]

    encoded = AutoTokenizer.from_pretrained(fp32_bundle)(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    tokenized = ort.InferenceSession(str(fp32_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    want = tokenized.run(["last_hidden_state"], {k: v.astype(np.int64) for k, v in encoded.items()})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
