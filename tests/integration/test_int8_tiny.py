"""ort-int8 on tiny random BERTs: the pass runs, the budget is honoured, the manifest explains itself."""

from __future__ import annotations

import dataclasses
from collections import Counter

import onnx
import pytest

from optimize.api import export_model
from optimize.config import CalibrationConfig, QuantConfig
from optimize.errors import InputError, ParityError


def _int8_job(quick_job, folder, out, **quant):
    job = quick_job(str(folder), out, target="ort-int8")
    return dataclasses.replace(job, calibration=CalibrationConfig(size=48, seq_len=64), quant=QuantConfig(**quant))


@pytest.mark.parametrize("classification", [False, True])
def test_int8_export_meets_its_budget(classification, tiny_model_dir, quick_job, tmp_path):
    folder = tiny_model_dir("bert", classification=classification)
    outcome = export_model(_int8_job(quick_job, folder, tmp_path / "out"))
    assert outcome.parity.cosine_mean >= 0.99 and outcome.parity.cosine_min >= 0.97
    int8 = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "int8")
    stats = int8["stats"]
    assert stats["int8_layers"] + stats["fp32_layers"] == 8  # 2 layers x (qkv, attn_out, ffn_in, ffn_out)
    # a tiny random BERT is easy to quantize: the budget keeps most of its layers int8 (all 8 when
    # written); a pass that quantizes nothing still meets the budget, so require the layers
    assert stats["int8_layers"] >= 6, stats["layers"]
    assert all(layer["alone"]["int8"] for layer in stats["layers"] if not layer["why"].startswith("kept fp32 on request"))
    # and the graph holds them: one QAttention or MatMulIntegerToFloat per int8 layer (an attention
    # moved onto the packed rows has three, its Q, K and V projections: one layer)
    nodes = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node
    ops = Counter(n.op_type for n in nodes)
    int8_linears = [n for n in nodes if n.op_type in ("QAttention", "MatMulIntegerToFloat") and not n.name.endswith(("_k_packed", "_v_packed"))]
    assert len(int8_linears) == stats["int8_layers"], ops
    assert ops["QuantizeLinear"] > 0
    # both attentions, QAttention or not, on the packed rows (unpad_attention.py): no fused op left
    # (the classifier's graph is not unpadded: README, "Interop")
    unpad = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "unpad")
    inner = outcome.manifest["passes"].get("final_ops_in_subgraphs", {})
    assert classification or (
        unpad["stats"].get("attention") == {"packed": 2} and ops["If"] == 2 and inner["com.microsoft::MultiHeadAttention"] == 4 and not ops["QAttention"]
    ), (unpad, ops, inner)


def test_keep_fp32_is_honoured_and_explained(tiny_model_dir, quick_job, tmp_path):
    outcome = export_model(_int8_job(quick_job, tiny_model_dir("bert"), tmp_path / "out", keep_fp32=("L0.ffn_out",)))
    layers = next(p for p in outcome.manifest["passes"]["passes"] if p["name"] == "int8")["stats"]["layers"]
    kept = next(layer for layer in layers if layer["layer"] == "L0.ffn_out")
    assert kept["choice"] == "fp32" and "on request" in kept["why"]


def test_an_unreachable_budget_is_an_error_and_writes_nothing(tiny_model_dir, quick_job, tmp_path):
    # even all-fp32 linear layers keep the int8 embedding table's rounding: 1e-7 is out of reach
    job = _int8_job(quick_job, tiny_model_dir("bert"), tmp_path / "out", min_cosine=0.9999999, min_cosine_floor=0.9999999)
    with pytest.raises(ParityError, match=r"out of tolerance after int8 on \d+ of \d+ linear layers: "):
        export_model(job)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_empty_calibration_file_is_an_input_error(tiny_model_dir, quick_job, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    job = dataclasses.replace(_int8_job(quick_job, tiny_model_dir("bert"), tmp_path / "out"), calibration=CalibrationConfig(path=empty))
    with pytest.raises(InputError, match="holds no text"):
        export_model(job)
    assert not (tmp_path / "out").exists()
