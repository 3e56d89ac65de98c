"""Quantization-aware distillation: the PyTorch fake-quantized model computes what the int8 graph computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, optimize
from tiny_models import TINY_FIT

from optimize.api import parity_batches
from optimize.exporter import export, resolve
from optimize.passes.int8 import Int8Pass
from optimize.passes.pipeline import Pipeline
from optimize.quantization.qat import FakeQuantized, weight_key
from optimize.runtimes.ort import OrtRunner
from optimize.targets import PassContext, get_target


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(1) / weights.sum(1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("target_name", ["ort-int8", pytest.param("trt-int8", marks=pytest.mark.slow)])
def test_fake_quantized_pytorch_matches_the_int8_graph(target_name, tiny_model_dir, quick_job, tmp_path):
    """ort-int8: the same arithmetic to float rounding. trt-int8 adds Q/DQ at TensorRT's fusion
    sites (attention products, residual Adds) that training does not model: its linear layers
    still take the learned ranges, and the graph stays about as close to the trained model."""
    folder = tiny_model_dir("bert")
    loaded = resolve(str(folder))
    job = quick_job(str(folder), tmp_path / "o", target=target_name)
    batches = parity_batches(loaded, job)[0].batches
    target = get_target(target_name)
    # the post-training plan (what --qat starts from): smoothing and outlier splits included
    passes = target.passes(PassContext(loaded, job))
    Pipeline(passes).run(export(loaded, job.export).model)
    plan = next(p for p in passes if isinstance(p, Int8Pass)).plan
    assert len(plan) == 8  # 2 layers x (QKV, O, FFN in, FFN out)
    student = copy.deepcopy(loaded.module).eval()
    with FakeQuantized(student, target.int8, loaded.hidden_size // loaded.num_heads, plan) as quantized:
        with torch.inference_mode():
            fake = [student(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.numpy() for b in batches]
    schemes = quantized.schemes()
    assert len(schemes) == 12  # Q, K and V each keyed, sharing one scheme

    model = export(loaded, job.export).model
    report = Pipeline(target.passes(PassContext(loaded, job, schemes))).run(model)
    int8 = next(r for r in report.records if r.name == "int8").stats
    assert int8["qat_layers"] == int8["int8_layers"] == 8  # every encoder linear layer, as trained
    runner = OrtRunner(model, target.session)
    graph = [runner.infer(b)["last_hidden_state"] for b in batches]
    fp32 = [loaded.module(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.detach().numpy() for b in batches]

    masks = [b["attention_mask"] for b in batches]
    pooled = {name: np.concatenate([_pooled(o, m) for o, m in zip(outs, masks)]) for name, outs in (("fake", fake), ("graph", graph), ("fp32", fp32))}
    gap_to_fake = 1 - _cosines(pooled["graph"], pooled["fake"]).min()
    gap_to_fp32 = 1 - _cosines(pooled["graph"], pooled["fp32"]).min()
    if target_name == "ort-int8":  # far closer to the fake-quantized model than to fp32: the same arithmetic
        assert gap_to_fake < gap_to_fp32 / 1000, (gap_to_fake, gap_to_fp32)
    else:
        assert gap_to_fake <= gap_to_fp32 * 1.5, (gap_to_fake, gap_to_fp32)


def test_weight_key_is_the_same_for_a_linear_and_its_exported_matrix():
    linear = torch.nn.Linear(8, 5)
    matrix = linear.weight.detach().numpy().T.copy()  # MatMul's [in, out]
    packed = np.concatenate([matrix, np.ones((8, 10), np.float32)], axis=1)  # Attention's Q|K|V
    assert weight_key(linear.weight.detach().T.numpy()) == weight_key(matrix) == weight_key(packed)


def test_qat_on_a_target_that_is_not_int8_is_one_line(tiny_model_dir, tmp_path):
    result = optimize("export", str(tiny_model_dir("bert")), "--target", "ort-fp32", "--qat", "10", "--output", str(tmp_path / "o"))
    assert_one_line_error(result, "--qat", "not an int8 target", code=2)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_qat_after_dropped_layers_learns_from_the_teacher_layers_kept(tiny_model_dir, quick_job, tmp_path):
    """--drop-layers with --qat: the student has fewer layers than its teacher, so each one is
    trained towards the teacher layer it was (this was an internal error: zip() of unequal
    lengths); and the fusion pass expects one fused attention per layer left, not per layer before."""
    import dataclasses

    from optimize.api import export_model
    from optimize.config import CalibrationConfig, PruneConfig, QuantConfig

    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "o", target="ort-int8")
    job = dataclasses.replace(
        job, prune=PruneConfig(drop_layers=1, fit_texts=TINY_FIT), quant=QuantConfig(qat_steps=5), calibration=CalibrationConfig(size=48, seq_len=64)
    )
    manifest = export_model(job).manifest
    assert manifest["qat"]["steps"] == 5 and manifest["pruning"]["layers_kept"] in ([0], [1])
    fusion = next(p for p in manifest["passes"]["passes"] if p["name"] == "ort-fusion")["stats"]
    assert fusion["fused_ops"]["Attention"] == 1 and not fusion["not_fused"] and not fusion["missing"], fusion
    assert manifest["source"]["layers"] == 1
