"""optimize.load and `optimize run` on bundles of tiny models of every task, against what the
PyTorch model (and transformers' own pipelines) say for the same texts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import optimize
from cli_helpers import assert_one_line_error, Result

TEXTS = [
    "A short one.",
    "John Smith flew from Paris to New York with Mary last Tuesday, and nobody at the office noticed.",
    "x",
    "Deployment compilers turn models into artifacts that run anywhere " * 16,  # past the tiny model's 128 positions
    "Three words here",
    "Héllo wörld, naïve café!",
    "Another sentence of middling length about nothing much.",
]


def _run(*args: str, stdin: bytes | None = None) -> Result:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OPTIMIZE_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "optimize", *args], input=stdin, capture_output=True, timeout=300, env=env)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def _plain_session(bundle) -> ort.InferenceSession:  # noqa: ANN001
    manifest = json.loads((bundle / "manifest.json").read_text())
    return ort.InferenceSession(
        str(bundle / "model.onnx"), providers=["CPUExecutionProvider"], disabled_optimizers=manifest["session"]["disabled_optimizers"]
    )


def test_encode_equals_each_text_run_alone(tiny_bundle):
    """Length-bucketed batches change nothing: each text's embedding is what the bundle gives it
    alone (mean over its real tokens, truncated at the tokenizer's limit), in the caller's order."""
    from transformers import AutoTokenizer

    _, bundle = tiny_bundle("feature-extraction")
    model = optimize.load(bundle)
    got = model.encode(TEXTS, batch_size=3)
    assert got.shape == (len(TEXTS), 64) and got.dtype == np.float32

    tokenizer = AutoTokenizer.from_pretrained(bundle)
    session = _plain_session(bundle)
    for i, text in enumerate(TEXTS):
        encoded = tokenizer([text], truncation=True, max_length=128, return_tensors="np")
        hidden = session.run(["last_hidden_state"], {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
        np.testing.assert_allclose(got[i], hidden[0].mean(axis=0), atol=1e-5, err_msg=text)

    unit = model.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert model.encode([]).shape == (0, 64)
    tokens = model.token_embeddings(["x", "Three words here"])
    assert [t.shape for t in tokens] == [(3, 64), (5, 64)]  # [CLS] x [SEP]; no padding rows


def test_batches_are_sorted_by_length_and_padded_to_their_own_longest(tiny_bundle):
    _, bundle = tiny_bundle("feature-extraction")
    runtime = optimize.load(bundle).runtime
    lengths = [len(ids) for ids in runtime.tokenizer(TEXTS, truncation=True, max_length=128)["input_ids"]]
    seen, widths = [], []
    for batch in runtime.batches(TEXTS, batch_size=2):
        width = batch.feeds["input_ids"].shape[1]
        assert width == max(lengths[i] for i in batch.rows)
        seen.extend(batch.rows)
        widths.append(width)
    assert sorted(seen) == list(range(len(TEXTS))) and widths == sorted(widths)
    assert max(widths) == 128  # the long text was truncated at the model's positions


def test_classifier_labels_and_scores_are_the_pytorch_models(tiny_bundle):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source, bundle = tiny_bundle("text-classification")
    got = optimize.load(bundle).predict(TEXTS[:3] + TEXTS[4:], batch_size=2)
    texts = TEXTS[:3] + TEXTS[4:]
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForSequenceClassification.from_pretrained(source).eval()
    with torch.inference_mode():
        probabilities = torch.softmax(reference(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    names = reference.config.id2label
    assert [g["label"] for g in got] == [names[int(p.argmax())] for p in probabilities]
    assert {g["label"] for g in got} <= {"negative", "neutral", "positive"}
    np.testing.assert_allclose([g["score"] for g in got], probabilities.max(axis=1), atol=1e-4)


def test_token_classifier_entities_match_the_transformers_pipeline(tiny_bundle):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    source, bundle = tiny_bundle("token-classification")
    texts = [TEXTS[1], TEXTS[4], TEXTS[6]]
    got = optimize.load(bundle).predict(texts)
    reference = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(source),
        tokenizer=AutoTokenizer.from_pretrained(source),
        aggregation_strategy="simple",
        device="cpu",
    )
    for text, mine in zip(texts, got):
        want = reference(text)
        assert [(e["entity_group"], e["start"], e["end"]) for e in mine["entities"]] == [(w["entity_group"], w["start"], w["end"]) for w in want]
        np.testing.assert_allclose([e["score"] for e in mine["entities"]], [w["score"] for w in want], atol=1e-4)
        for entity in mine["entities"]:
            assert entity["word"] == text[entity["start"] : entity["end"]]
    assert any(mine["entities"] for mine in got)


def test_question_answering_spans_are_the_pytorch_models_best(tiny_bundle):
    """transformers 5 has no question-answering pipeline: the best span is found here by brute
    force over the PyTorch model's logits (start <= end, both in the context, at most 30 tokens)."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    source, bundle = tiny_bundle("question-answering")
    model = optimize.load(bundle)
    pairs = [
        ("Who flew to New York?", TEXTS[1]),
        ("What do compilers do?", "Deployment compilers turn models into artifacts that run anywhere."),
        ("Where?", "In the office on the third floor."),
    ]
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForQuestionAnswering.from_pretrained(source).eval()
    for (question, context), mine in zip(pairs, model.predict(pairs)):
        encoded = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        with torch.inference_mode():
            out = reference(**encoded)
        start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
        inside = [i for i, s in enumerate(encoded.sequence_ids(0)) if s == 1]
        best = max(((start[s] + end[e], s, e) for s in inside for e in inside if s <= e < s + 30))
        want = (offsets[best[1]][0], offsets[best[2]][1])
        assert (mine["start"], mine["end"]) == want
        assert mine["answer"] == context[want[0] : want[1]] and 0 < mine["score"] <= 1
    assert model.answer(*pairs[0]) == model.predict([{"question": pairs[0][0], "context": pairs[0][1]}])[0]


def test_no_progress_bar_by_default(tiny_bundle, capfd):
    _, bundle = tiny_bundle("feature-extraction")
    optimize.load(bundle).encode(TEXTS * 10, batch_size=4)
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_run_prints_a_json_line_per_input_from_stdin_arguments_and_files(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("text-classification")
    done = _run("run", str(bundle), stdin=b"a fine film\n\nanother one\n")
    assert done.code == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["a fine film", "another one"]
    assert all(line["label"] in ("negative", "neutral", "positive") and 0 < line["score"] <= 1 for line in lines)
    assert lines == [{"text": t, **r} for t, r in zip(["a fine film", "another one"], optimize.load(bundle).predict(["a fine film", "another one"]))]

    done = _run("run", str(bundle), "first", "second", "third", "--batch-size", "2")
    assert done.code == 0, done.stderr
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["first", "second", "third"]

    table = tmp_path / "rows.csv"
    table.write_text('id,review\n1,"good, really"\n2,bad\n', encoding="utf-8")
    done = _run("run", str(bundle), "--file", str(table), "--text-column", "review")
    assert done.code == 0, done.stderr
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["good, really", "bad"]


def test_run_answers_questions_and_embeds(tiny_bundle):
    _, qa = tiny_bundle("question-answering")
    done = _run("run", str(qa), stdin=b'{"question": "Who?", "context": "Mary went home."}\n')
    assert done.code == 0, done.stderr
    line = json.loads(done.stdout)
    assert line["input"] == {"question": "Who?", "context": "Mary went home."}
    assert "Mary went home."[line["start"] : line["end"]] == line["answer"]

    _, fe = tiny_bundle("feature-extraction")
    done = _run("run", str(fe), "x")
    assert done.code == 0, done.stderr
    assert len(json.loads(done.stdout)["embedding"]) == 64


@pytest.mark.slow  # the quick subset (-m 'not slow') stays under 5 minutes; the full suite runs it
def test_run_refuses_bad_input_in_one_line(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("text-classification")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(_run("run", str(bundle), "--file", str(empty)), "holds no text", code=2)
    assert_one_line_error(_run("run", str(bundle), stdin=b"fine\n\xff\xfe broken\n"), "not valid UTF-8", "line 2", code=2)
    assert_one_line_error(_run("run", str(bundle), stdin=b"\n  \n"), "no text to run", code=2)
    assert_one_line_error(_run("run", str(tmp_path), "text"), "not an optimize bundle", code=2)
    assert_one_line_error(_run("run", str(bundle), "--file", str(tmp_path)), "is a folder", code=2)
    assert_one_line_error(_run("run", str(bundle), "x", "--batch-size", "0"), "--batch-size", code=2)
    _, qa = tiny_bundle("question-answering")
    assert_one_line_error(_run("run", str(qa), "just a question"), "question and its context", code=2)


def test_tensorrt_is_imported_only_for_a_tensorrt_bundle_and_refused_where_absent(tiny_bundle, tmp_path):
    _, bundle = tiny_bundle("feature-extraction")
    probe = "import sys, optimize; optimize.load(sys.argv[1]).encode(['a']); print('tensorrt' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, str(bundle)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the refusal is for machines without it")
    except ImportError:
        pass
    trt = tmp_path / "trt"
    shutil.copytree(bundle, trt)
    manifest = json.loads((trt / "manifest.json").read_text())
    manifest.update(target="trt-fp16", runtime="tensorrt", precision="fp16")
    (trt / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(_run("run", str(trt), "x"), "cannot run TensorRT bundle", "TensorRT is not installed", code=5)
