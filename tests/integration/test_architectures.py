"""Every tested architecture on every target and every task, and the generic path, on tiny
random-weight models (tests/tiny_models.py).

Each (architecture, task) is exported once per module; each target then runs its own passes on
a copy of that graph and its parity gate judges the result against PyTorch, as ``export`` does
(the full command, bundle included, is exercised for the fp32 target in
test_tiny_architectures.py and below for the generic path).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import tiny_models
from cli_helpers import optimize
from optimize.api import parity_batches, session_for
from optimize.config import CalibrationConfig, ExportConfig, ExportJob, ParityConfig, QuantConfig, SpeedCheckConfig
from optimize.exporter import export, resolve
from optimize.parity import ParityReport, compare
from optimize.passes.pipeline import Pipeline
from optimize.runtimes.ort import OrtRunner
from optimize.runtimes.torch_ref import TorchRunner
from optimize.targets import PassContext, get_target

TARGETS = ("ort-fp32", "ort-int8", "ort-fp16", "trt-fp16", "trt-int8")
HEADS = {"text-classification": "sequence", "token-classification": "token", "question-answering": "qa"}


def _job(task: str) -> ExportJob:
    # 24 texts a set keep the matrix fast; on so few one neighbour flip costs 0.042 of agreement
    # (ParityConfig: a few hundred keep one flip from deciding it), so the int8 agreement budget is
    # 0.9 here; the cosine budgets stay the targets' own
    return ExportJob(
        model="unused",
        target="ort-fp32",
        output=None,  # type: ignore[arg-type]
        export=ExportConfig(task=task, seq_len=64, dynamic_probe_shapes=((3, 17),)),
        calibration=CalibrationConfig(size=32, seq_len=64),
        parity=ParityConfig(size=24, unseen_size=24, seq_len=64),
        speed=SpeedCheckConfig(enabled=False),
        quant=QuantConfig(min_agreement=0.9),
    )


@pytest.fixture(scope="module")
def exported(tiny_model_dir):
    """(kind, task, folder) -> (loaded model, exported graph as bytes), each exported once."""
    cache: dict[tuple, tuple] = {}

    def get(kind: str, task: str = "feature-extraction", folder=None):
        key = (kind, task, str(folder))
        if key not in cache:
            path = folder or tiny_model_dir(kind, head=HEADS.get(task))
            loaded = resolve(str(path), task)
            result = export(loaded, _job(task).export)
            cache[key] = (loaded, ir.to_proto(result.model).SerializeToString())
        return cache[key]

    return get


def _through_target(loaded, graph: bytes, target_name: str, task: str) -> tuple[ParityReport, ir.Model, dict]:
    """The target's passes on a copy of the graph, then its parity gate on both text sets (the
    calibration domains' held-out text and the unseen domain), as export judges them."""
    job = dataclasses.replace(_job(task), target=target_name)
    target = get_target(target_name)
    model = ir.from_proto(onnx.load_from_string(graph))
    report = Pipeline(target.passes(PassContext(loaded, job))).run(model)
    reference, candidate = TorchRunner(loaded), OrtRunner(model, session_for(target, job))
    reports = [
        compare(reference, candidate, p.batches, task=task, tolerances=target.tolerances(task, job), texts=p.texts.label)
        for p in parity_batches(loaded, job)
    ]
    failures = [f"{r.texts}: {f}" for r in reports for f in r.failures]
    parity = dataclasses.replace(reports[0], failures=tuple(failures))
    fusion = next((r.stats for r in report.records if r.name == "ort-fusion"), {})
    return parity, model, fusion


def _bert_quick(kinds) -> list:
    """Every architecture in the full suite; bert alone in the quick subset (-m "not slow")."""
    return [k if k == "bert" else pytest.param(k, marks=pytest.mark.slow) for k in kinds]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", _bert_quick(tiny_models.ARCHITECTURES))
def test_every_architecture_passes_every_target(kind, target, exported):
    loaded, graph = exported(kind)
    parity, model, fusion = _through_target(loaded, graph, target, "feature-extraction")
    assert parity.ok, (kind, target, parity.failures)
    if target.startswith("ort-"):
        # what the architecture description promises fused, fused (int8 turns Attention into QAttention later)
        assert fusion["missing"] == {}, fusion
        for name, layers in loaded.family.expected_fusions(loaded.module.config, loaded.num_layers).items():
            op = {"attention": "Attention", "mha": "MultiHeadAttention", "bias_gelu": "BiasGelu"}[name]
            assert fusion["fused_ops"].get(op) == layers, (kind, name, fusion)
    else:  # TensorRT graphs stay standard ONNX
        assert all(n.domain in ("", "ai.onnx") for n in model.graph)


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "question-answering"])
@pytest.mark.parametrize("kind", _bert_quick(tiny_models.ARCHITECTURES))
def test_every_architecture_exports_every_head_task_with_fp32_parity(kind, task, exported):
    loaded, graph = exported(kind, task)
    assert loaded.task == task  # the default follows the checkpoint's head
    parity, model, _ = _through_target(loaded, graph, "ort-fp32", task)
    assert parity.ok, (kind, task, parity.failures)
    assert parity.label_agreement == 1.0 and parity.max_abs_error < 1e-3
    outputs = [v.name for v in model.graph.outputs]
    assert outputs == list(loaded.outputs)
    shapes = [len(v.shape) for v in model.graph.outputs]
    assert shapes == {"text-classification": [2], "token-classification": [3], "question-answering": [2, 2]}[task]


@pytest.mark.parametrize("task", ["token-classification", "question-answering", "sentence-embedding"])
@pytest.mark.parametrize("target", ["ort-int8", "ort-fp16", "trt-fp16", "trt-int8"])
def test_new_tasks_pass_every_target_on_bert(task, target, exported, tiny_model_dir, tmp_path_factory):
    folder = None
    if task == "sentence-embedding":
        folder = _sentence_folder(tiny_model_dir, tmp_path_factory, "bert", ("mean",))
    loaded, graph = exported("bert", task, folder)
    parity, _, _ = _through_target(loaded, graph, target, task)
    assert parity.ok, (task, target, parity.failures)


#: every pooling mode once, each on another architecture (pooling is the same code for all of
#: them; ModernBERT because sentence-transformers runs it with SDPA attention, the bundle eager)
POOLING = {
    "bert": ("mean",), "distilbert": ("cls",), "roberta": ("max",), "xlm-roberta": ("mean_sqrt_len_tokens",),
    "electra": ("lasttoken",), "albert": ("cls", "mean"), "modernbert": ("mean",),
}


def _sentence_folder(tiny_model_dir, tmp_path_factory, kind: str, modes: tuple[str, ...]):
    folder = tmp_path_factory.getbasetemp() / f"st-{kind}-{'-'.join(modes)}"
    if not (folder / "modules.json").is_file():
        # no Normalize on two of them: mean_sqrt_len_tokens differs from mean only in scale
        tiny_models.sentence_transformers_folder(tiny_model_dir(kind), folder, modes, normalize=kind not in ("electra", "xlm-roberta"))
    return folder


@pytest.mark.parametrize("kind", _bert_quick(POOLING))
def test_sentence_embedding_matches_sentence_transformers(kind, exported, tiny_model_dir, tmp_path_factory):
    """The graph's sentence_embedding against the sentence-transformers package's own encode."""
    from sentence_transformers import SentenceTransformer

    folder = _sentence_folder(tiny_model_dir, tmp_path_factory, kind, POOLING[kind])
    loaded, graph = exported(kind, "sentence-embedding", folder)
    parity, model, _ = _through_target(loaded, graph, "ort-fp32", "sentence-embedding")
    assert parity.ok, parity.failures
    assert [v.name for v in model.graph.outputs] == ["sentence_embedding", "token_embeddings"]

    texts = ["A short one.", "Deployment compilers turn models into artifacts that run anywhere.", "x", "Three words here"]
    want = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    encoded = loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    got = OrtRunner(model).infer({n: encoded[n].astype(np.int64) for n in loaded.input_names})["sentence_embedding"]
    assert got.shape == (len(texts), 64 * len(POOLING[kind]))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_token_classification_and_question_answering_bundles(kind, tiny_model_dir, quick_job, tmp_path):
    """The command's way: a bundle per task, its outputs named by the task."""
    from optimize.api import export_model

    for task, head in (("token-classification", "token"), ("question-answering", "qa")):
        outcome = export_model(quick_job(str(tiny_model_dir(kind, head=head)), tmp_path / task))
        assert outcome.manifest["task"] == task
        assert [o["name"] for o in outcome.manifest["io"]["outputs"]] == {
            "token-classification": ["logits"], "question-answering": ["start_logits", "end_logits"]}[task]
        assert outcome.parity.label_agreement == 1.0 and outcome.parity.max_abs_error < 1e-3


@pytest.mark.slow
def test_generic_path_exports_an_untested_encoder_and_says_so(tiny_model_dir, tmp_path):
    folder = tmp_path / "ernie"
    tiny_models.build(tiny_models.GENERIC, folder)
    done = optimize("export", str(folder), "--output", str(tmp_path / "out"), "--no-speed", "--seq-len", "64", "--parity-size", "16")
    assert done.code == 0, done.stderr
    assert "architecture ernie is not in the tested list" in done.stdout and "parity was checked" in done.stdout
    assert "generic path" in done.stderr  # said up front too
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["tested_architecture"] is False
    assert any("not in the tested list" in note for note in manifest["notes"])


def test_sentence_transformers_folder_gets_a_hint_and_keeps_feature_extraction(tiny_model_dir, tmp_path_factory):
    folder = _sentence_folder(tiny_model_dir, tmp_path_factory, "bert", ("mean",))
    loaded = resolve(str(folder))
    assert loaded.task == "feature-extraction" and loaded.outputs == ("last_hidden_state",)
    assert any("--task sentence-embedding" in hint for hint in loaded.hints)
    assert not resolve(str(tiny_model_dir("bert"))).hints  # a plain folder gets no hint


def test_sentence_embedding_needs_a_sentence_transformers_folder(tiny_model_dir):
    from optimize.errors import InputError

    with pytest.raises(InputError, match="not a sentence-transformers folder"):
        resolve(str(tiny_model_dir("bert")), "sentence-embedding")


def test_modernbert_exports_through_torch_export_with_padding(tiny_model_dir):
    """Local attention over a padded batch: a padded query whose window holds only padding has no
    key at all. Under SDPA's boolean mask PyTorch and the exported graph fill that row differently
    (1e-2 apart), the dynamo capture failed its shape probes and the export fell back to
    TorchScript. Loaded with eager attention (architectures.py) torch.export matches everywhere."""
    loaded = resolve(str(tiny_model_dir("modernbert")))
    assert loaded.module.config._attn_implementation == "eager"
    # batch 3 x 40: the middle row is padded from token 20; the local window (16) of its last
    # queries then holds padding only
    result = export(loaded, ExportConfig(seq_len=64, dynamic_probe_shapes=((3, 40), (2, 64))))
    assert result.strategy == "dynamo", [a.reason for a in result.attempts]
    assert all(probe.max_abs_error < 1e-5 for probe in result.probes)
