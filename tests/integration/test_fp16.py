"""ort-fp16 on tiny BERTs, and the guard: planted activations beyond fp16's range."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graph_checks import cast_chains
from optimize.api import export_model
from optimize.calibration.source import CalibrationSource
from optimize.config import CalibrationConfig, ExportConfig
from optimize.exporter import export, resolve
from optimize.passes.fp16 import Fp16Pass


def test_fp16_bundle_keeps_io_types_and_has_no_cast_chains(tiny_model_dir, quick_job, tmp_path):
    outcome = export_model(quick_job(str(tiny_model_dir("bert")), tmp_path / "out", target="ort-fp16"))
    parity = outcome.parity  # the figures, not the gate's verdict (export_model raises when that fails)
    assert parity.cosine_mean >= 0.9999 and parity.cosine_min >= 0.9995 and parity.nonfinite == 0, parity.summary()
    manifest = outcome.manifest
    assert [i["dtype"] for i in manifest["io"]["inputs"]] == ["INT64"] * 3
    assert manifest["io"]["outputs"][0]["dtype"] == "FLOAT"
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer if t.dims and np.prod(t.dims) > 1000}
    assert dtypes == {onnx.TensorProto.FLOAT16}  # every large weight stored once, in fp16
    assert cast_chains(tmp_path / "out" / "model.onnx") == 0


@pytest.fixture(scope="module")
def planted(tiny_model_dir, tmp_path_factory):
    """A tiny BERT whose first FFN writes values near 1e5: beyond fp16's 65504."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("planted") / "bert"
    model = transformers.AutoModel.from_pretrained(tiny_model_dir("bert"))
    with torch.no_grad():  # scaled weights: the residual after layer 0's FFN reaches about 8e4
        model.encoder.layer[0].intermediate.dense.weight.mul_(30.0)
        model.encoder.layer[0].output.dense.weight.mul_(40000.0)
        model.encoder.layer[0].output.dense.bias.mul_(40000.0)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_model_dir("bert")).save_pretrained(folder)
    return folder


def _standard_graph(folder) -> tuple[ir.Model, object]:
    loaded = resolve(str(folder))
    return export(loaded, ExportConfig(seq_len=64, dynamic_probe_shapes=((1, 4),))).model, loaded


def _reference_run(model: ir.Model, loaded) -> np.ndarray:
    """ONNX's reference evaluator computes fp16 in numpy fp16: overflow shows as it would on a
    GPU. (ONNX Runtime's CPU provider quietly widens many fp16 ops to fp32 and would hide it.)"""
    from onnx.reference import ReferenceEvaluator

    encoded = loaded.tokenizer(["a planted overflow", "in the feed forward network of layer zero"], padding=True, return_tensors="np")
    feeds = {k: encoded[k].astype(np.int64) for k in loaded.input_names}
    return ReferenceEvaluator(ir.to_proto(model)).run(None, feeds)[0]


def _fp16(loaded, **options) -> Fp16Pass:
    return Fp16Pass(CalibrationSource(loaded.tokenizer, loaded.input_names, CalibrationConfig(size=16, seq_len=64)), **options)


def test_naive_conversion_of_the_planted_model_overflows_and_the_guard_does_not(planted):
    model, loaded = _standard_graph(planted)
    want = _reference_run(model, loaded)
    _fp16(loaded, keep_normalization_fp32=False, range_guard=False)(model)
    assert not np.isfinite(_reference_run(model, loaded)).all()

    model, loaded = _standard_graph(planted)
    guarded = _fp16(loaded)
    guarded(model)
    got = _reference_run(model, loaded)
    assert np.isfinite(got).all()
    assert guarded.stats["kept_fp32_by_range"]
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() > 0.999


def test_measured_ranges_keep_the_planted_layer_fp32(planted, quick_job, tmp_path):
    job = quick_job(str(planted), tmp_path / "out", target="ort-fp16")
    job = dataclasses.replace(job, calibration=CalibrationConfig(size=32, seq_len=64))
    outcome = export_model(job)
    parity = outcome.parity
    assert parity.cosine_min >= 0.9995 and parity.nonfinite == 0, parity.summary()
    fp16 = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "fp16")["stats"]
    assert fp16["max_observed"] > 65504 / 4
    assert fp16["kept_fp32_by_range"]  # decided from the measurement, not a fixed list
    assert cast_chains(tmp_path / "out" / "model.onnx") == 0
    json.dumps(fp16)  # the manifest entry is plain data
