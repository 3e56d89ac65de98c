"""trt-fp16 and trt-int8 on tiny BERTs: everything up to TensorRT's builder call, on CPU.

The graphs must be what TensorRT's ONNX parser takes (no contrib ops, listed operators,
symmetric int8 Q/DQ where TensorRT fuses them), run in ONNX Runtime within tolerance, and be
readable by Polygraphy. Tests marked ``tensorrt`` build a real engine and skip without one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from cli_helpers import assert_one_line_error, optimize
from optimize.api import export_model
from optimize.config import CalibrationConfig, EngineConfig, QuantConfig, ShapeRange
from optimize.passes.trt_ready import TENSORRT_SUPPORTED_OPS, problems
from optimize.runtimes.tensorrt import unavailable

TRT_MISSING = unavailable()


@pytest.fixture(scope="module")
def trt_bundles(tiny_model_dir, tmp_path_factory):
    """Both TensorRT targets exported once from the same tiny BERT."""
    from optimize.config import ExportConfig, ExportJob, ParityConfig, SpeedCheckConfig

    root = tmp_path_factory.mktemp("trt")
    bundles = {}
    for target in ("trt-fp16", "trt-int8"):
        job = ExportJob(
            model=str(tiny_model_dir("bert")),
            target=target,
            output=root / target,
            export=ExportConfig(seq_len=64, dynamic_probe_shapes=((1, 5), (3, 17))),
            parity=ParityConfig(size=24, seq_len=64),
            speed=SpeedCheckConfig(enabled=False),
            calibration=CalibrationConfig(size=48, seq_len=64),
            quant=QuantConfig(),
            engine=EngineConfig(batch=ShapeRange(1, 4, 8), sequence=ShapeRange(8, 64, 128)),
        )
        bundles[target] = (export_model(job), root / target)
    return bundles


@pytest.mark.parametrize("target", ["trt-fp16", "trt-int8"])
def test_graph_is_what_tensorrts_parser_takes(target, trt_bundles):
    outcome, folder = trt_bundles[target]
    # the figures, not the gate's own verdict (export_model raises when that fails)
    mean, worst = {"trt-fp16": (0.9999, 0.9995), "trt-int8": (0.99, 0.97)}[target]
    assert outcome.parity.cosine_mean >= mean and outcome.parity.cosine_min >= worst, outcome.parity.summary()
    assert outcome.parity.nonfinite == 0 and outcome.parity.samples >= 16
    model = onnx.load(str(folder / "model.onnx"))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {n.op_type for n in model.graph.node} <= TENSORRT_SUPPORTED_OPS
    assert problems(ir.from_proto(model)) == []


@pytest.mark.parametrize("target", ["trt-fp16", "trt-int8"])
def test_manifest_records_the_profile_and_that_no_engine_was_built(target, trt_bundles):
    _, folder = trt_bundles[target]
    manifest = json.loads((folder / "manifest.json").read_text())
    section = manifest["tensorrt"]
    assert section["profile"]["input_ids"] == [[1, 8], [4, 64], [8, 128]]
    if TRT_MISSING:
        assert section["engine"] is None
        assert "optimize build" in section["engine_note"]
        assert not (folder / "engine.plan").exists()


def test_trt_fp16_keeps_normalization_in_fp32_and_io_types(trt_bundles):
    outcome, folder = trt_bundles["trt-fp16"]
    assert outcome.parity.cosine_min >= 0.9995
    model = ir.load(folder / "model.onnx")
    norms = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert norms and all(n.inputs[0].dtype == ir.DataType.FLOAT for n in norms)
    assert all(v.dtype == ir.DataType.INT64 for v in model.graph.inputs)
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert any(n.op_type == "MatMul" and n.inputs[0].dtype == ir.DataType.FLOAT16 for n in model.graph)


def test_trt_int8_qdq_is_symmetric_per_channel_and_where_tensorrt_fuses(trt_bundles):
    outcome, folder = trt_bundles["trt-int8"]
    assert outcome.parity.cosine_mean >= 0.99 and outcome.parity.cosine_min >= 0.97
    model = ir.load(folder / "model.onnx")
    qdq = [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = node.inputs[2].const_value.numpy()
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    # weights: int8 initializers dequantized per output channel (axis 1 of a [in, out] MatMul weight)
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None]
    assert weight_dq
    for node in weight_dq:
        assert node.attributes["axis"].as_int() == 1
        assert node.inputs[1].const_value.numpy().size == node.inputs[0].const_value.shape[1]
    # activation Q/DQ (on a computed tensor, not a weight) reaches both inputs of each attention
    # batched MatMul kept int8, and the skip input of each residual Add kept int8
    def fed_by_activation_dq(value: ir.Value | None) -> bool:
        producer = value.producer() if value is not None else None
        return producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs[0].const_value is None

    stats = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "int8")["stats"]
    assert stats["style"] == "qdq" and stats["activation_sites"] > 0
    # the tiny BERT is easy to quantize: the search keeps its sites int8 (all 8 when written), so
    # the check below always has something to find
    assert stats["int8_layers"] >= 6 and stats["int8_sites"] >= 6, stats
    bmm = [n for n in model.graph if n.op_type == "MatMul" and all(fed_by_activation_dq(v) for v in n.inputs)]
    residual = [n for n in model.graph if n.op_type == "Add" and any(fed_by_activation_dq(v) for v in n.inputs)]
    assert bmm and residual
    assert len(bmm) + len(residual) == stats["int8_sites"]
    # each int8 linear layer's input is centred by a constant Add before its QuantizeLinear (the
    # layer's bias takes the shift back); the sites' inputs are not
    assert stats["activations"] == "int8 symmetric, linear inputs centred"
    weight_readers = {use.name for n in weight_dq for use, _ in n.outputs[0].uses()}
    centred = [
        n for n in model.graph
        if n.op_type == "MatMul" and n.name in weight_readers
        and (q := n.inputs[0].producer().inputs[0].producer()) is not None
        and (add := q.inputs[0].producer()) is not None and add.op_type == "Add" and add.inputs[1].const_value is not None
    ]
    assert len(centred) == len(weight_readers) > 0
    # every linear layer of a BERT has a bias: each takes its shift back there (Q, K and V, which
    # share one quantized input, each in its own bias), with no correcting Add of its own
    assert not [n.name for n in model.graph if "_shift_correction" in n.name]


def test_readiness_names_each_problem():
    graph = onnx.parser.parse_model(
        """<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[2, 4] x) => (float[2, 4] y) {
            q = QuantizeLinear <axis = 1> (x, scale, zp)
            d = DequantizeLinear (q, scale, zp)
            s = com.microsoft.FastGelu (d)
            y = Hardmax (s)
        }"""
    )
    graph.graph.initializer.extend(
        [onnx.numpy_helper.from_array(np.float32(0.1), "scale"), onnx.numpy_helper.from_array(np.uint8(128), "zp")]
    )
    found = problems(ir.from_proto(graph))
    text = " | ".join(found)
    assert "com.microsoft" in text and "FastGelu" in text
    assert "not symmetric int8" in text
    assert "Hardmax" not in text  # a supported op is not reported


def test_readiness_rejects_an_opset_the_parser_does_not_take():
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 25]>
        g (float[2] x) => (float[2] y) { y = Relu (x) }"""
    )
    assert any("opset 25" in p for p in problems(ir.from_proto(model)))


@pytest.mark.parametrize("target", ["trt-fp16", "trt-int8"])
def test_polygraphy_inspects_the_bundle(target, trt_bundles):
    _, folder = trt_bundles[target]
    polygraphy = str(Path(sys.executable).parent / "polygraphy")
    done = subprocess.run(
        [polygraphy, "inspect", "model", str(folder / "model.onnx")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "input_ids" in done.stdout and "last_hidden_state" in done.stdout


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is available here: the refusal cannot be shown")
def test_build_refuses_cleanly_without_tensorrt(trt_bundles, tmp_path):
    _, folder = trt_bundles["trt-fp16"]
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    result = optimize("build", str(copy))
    assert_one_line_error(result, "TensorRT", "optimize[tensorrt]", code=5)
    assert not (copy / "engine.plan").exists()


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is available here")
@pytest.mark.slow  # the quick subset (-m 'not slow') stays under 5 minutes; the full suite runs it
def test_export_says_the_engine_was_not_built(tiny_model_dir, tmp_path):
    result = optimize(
        "export", str(tiny_model_dir("bert")), "--target", "trt-fp16", "--output", str(tmp_path / "b"),
        "--no-speed", "--seq-len", "64", "--parity-size", "16",
    )
    assert result.code == 0, result.stderr
    said = result.stdout + result.stderr
    assert "engine not built" in said and f"optimize build {tmp_path / 'b'}" in said


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_MISSING is not None, reason=f"needs TensorRT: {TRT_MISSING}")
@pytest.mark.parametrize("target", ["trt-fp16", "trt-int8"])
def test_engine_builds_and_matches_onnxruntime(target, trt_bundles, tmp_path):
    from optimize.api import build_bundle

    _, folder = trt_bundles[target]
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    manifest = build_bundle(copy)  # comparison batches of 16 against a profile of at most 8 rows
    assert (copy / "engine.plan").stat().st_size > 0
    check = manifest["tensorrt"]["engine"]["ort_comparison"]
    assert check["passed"] and check["polygraphy"]["last_hidden_state"]["max_absdiff"] >= 0
    assert manifest["tensorrt"]["engine"]["strongly_typed"]
    # the timing cache is saved (its lock is not) and reused by the next build
    assert (copy / "timing.cache").is_file()
    assert not (copy / "timing.cache.lock").exists() and "timing.cache.lock" not in manifest["files"]


def test_engine_profile_is_checked():
    with pytest.raises(ValueError):
        dataclasses.replace(ShapeRange(1, 4, 8), optimum=16)


# --- the engine path as far as a CPU goes: the profile, the comparison, the refusals ---------------


def _held_out_batches(folder: Path, batch_size: int = 16, seq_len: int = 64):
    from transformers import AutoTokenizer

    from optimize.calibration.batches import token_batches
    from optimize.calibration.corpus import parity_texts

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = list(dict.fromkeys(parity_texts(None, 40)))
    return list(token_batches(tokenizer, texts, ("input_ids", "attention_mask", "token_type_ids"), batch_size=batch_size, seq_len=seq_len))


def _with_output_scaled(folder: Path, scale: np.ndarray, into: Path) -> Path:
    """The bundle's graph with its first output multiplied by ``scale`` (a real, different model)."""
    model = onnx.load(str(folder / "model.onnx"))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(scale.astype(np.float32), "output_scale"))
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{output}_raw", "output_scale"], [output]))
    onnx.save(model, str(into))
    return into


def test_padding_up_to_the_profile_changes_no_real_output(trt_bundles):
    """ProfileFit pads 2-row batches of up to 48 tokens to batch 4 and 64 tokens (repeated rows, masked
    tokens) and cuts the outputs back: ONNX Runtime gives the same numbers as on the batch itself."""
    from optimize.config import SessionConfig
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.trt_profile import ProfileFit

    _, folder = trt_bundles["trt-fp16"]
    direct = OrtRunner(folder / "model.onnx", SessionConfig(threads=1))
    fitted = ProfileFit(direct, EngineConfig(batch=ShapeRange(4, 4, 8), sequence=ShapeRange(64, 64, 128)))
    for feeds in _held_out_batches(folder, batch_size=2, seq_len=48)[:4]:
        assert feeds["input_ids"].shape[1] < 64
        want, got = direct.infer(feeds)["last_hidden_state"], fitted.infer(feeds)["last_hidden_state"]
        assert got.shape == want.shape
        real = feeds["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[real], want[real], atol=2e-3, rtol=2e-3)


def test_the_engine_check_is_judged_like_export_parity_and_keeps_polygraphys_statistics(trt_bundles, tmp_path):
    """An engine whose every output is 6% larger matches ONNX Runtime in direction (cosine 1) though
    elementwise rtol 5e-2 would fail it; one whose hidden dimensions are rescaled at random does not."""
    from optimize.config import SessionConfig, Tolerances
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.tensorrt import compare_with_onnxruntime
    from optimize.runtimes.trt_profile import ProfileFit, cut_to_profile

    _, folder = trt_bundles["trt-fp16"]
    engine = EngineConfig(batch=ShapeRange(1, 4, 8), sequence=ShapeRange(8, 64, 128))
    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    tolerances = Tolerances(cosine_mean=0.9999, cosine_min=0.9995, neighbour_agreement=0.99)
    reference = OrtRunner(folder / "model.onnx", SessionConfig(threads=1))

    def check(scale):
        candidate = ProfileFit(OrtRunner(_with_output_scaled(folder, scale, tmp_path / f"c{len(list(tmp_path.iterdir()))}.onnx"), SessionConfig(threads=1)), engine)
        batches = cut_to_profile(_held_out_batches(folder), engine)
        return compare_with_onnxruntime(reference, candidate, batches, task="feature-extraction", output="last_hidden_state", tolerances=tolerances)

    louder = check(np.full(hidden, 1.06))
    assert louder.ok, louder.parity.failures
    assert louder.batches >= 5  # 40 texts in batches of 16, cut to 8 rows
    stats = louder.polygraphy["last_hidden_state"]
    assert stats["max_reldiff"] > 0.05 and stats["max_absdiff"] > 0  # what atol/rtol 5e-2 failed on
    assert json.loads(json.dumps(louder.as_dict()))["parity"]["cosine_min"] > 0.9999

    skewed = check(np.random.default_rng(0).uniform(0.2, 1.8, hidden))
    assert not skewed.ok and any("cosine" in failure for failure in skewed.parity.failures)


def test_bench_refuses_shapes_outside_the_engines_profile_in_one_line(trt_bundles, tmp_path):
    _, folder = trt_bundles["trt-fp16"]
    result = optimize("bench", str(folder), "--batch", "64", "--seq", "16", "--out", str(tmp_path / "bench"))
    assert_one_line_error(result, "outside a TensorRT engine's optimization profile", "batch 1-8, sequence 8-128", "optimize build", code=2)
    assert not (tmp_path / "bench").exists()


def test_build_flags_are_checked_against_the_recorded_model_before_any_gpu_work(trt_bundles, tmp_path):
    _, folder = trt_bundles["trt-fp16"]
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    result = optimize("build", str(copy), "--seq-len", "8,64,256")
    assert_one_line_error(result, "--seq-len maximum 256 is longer than the model allows (128 positions)", code=2)
    assert_one_line_error(optimize("build", str(copy), "--workspace", "0"), "--workspace must be at least 1 MiB", code=2)
    assert_one_line_error(optimize("build", str(copy), "--batch", "8,2,1"), "--batch takes", code=2)
