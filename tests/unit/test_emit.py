"""int8 emission on a small FFN built in code: the rewritten graphs still compute the same function."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from graphs import model, run, tensor, value
from optimize.calibration.ranges import quant_params
from optimize.passes.base import op_counts
from optimize.quantization.emit import Decision, emit
from optimize.quantization.targets import find_targets

# Tolerances hold with and without VNNI: on plain AVX2, ORT's u8 x s8 kernel (vpmaddubsw)
# saturates about 0.2% of its 16-bit pair sums here, which doubles the int8 error (checked
# against an exact emulation of the instruction); VNNI's vpdpbusd does not saturate.
RNG = np.random.default_rng(0)
W1 = RNG.normal(0, 0.05, (64, 128)).astype(np.float32)
B1 = RNG.normal(0, 0.1, 128).astype(np.float32)
W2 = RNG.normal(0, 0.05, (128, 64)).astype(np.float32)
B2 = RNG.normal(0, 0.1, 64).astype(np.float32)


def ffn() -> ir.Model:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    inits = [tensor("w1", W1), tensor("b1", B1), tensor("w2", W2), tensor("b2", B2)]
    return model(nodes, [value("x", shape=["b", "s", 64])], [value("y", shape=["b", "s", 64])], inits)


def _x(outlier: bool = False):
    x = np.random.default_rng(5).normal(0, 1, (2, 5, 64)).astype(np.float32)
    if outlier:
        x[..., 7] *= 30  # an outlier channel, as BERT's residual stream has
    return x


def _decisions(m, symmetric=False, variant="plain", outlier=False):
    x = _x(outlier)
    hidden = np.maximum(x @ W1 + B1, 0)
    decisions = []
    for target, activation in zip(find_targets(m), [x, hidden]):
        smooth = outliers = None
        values = activation.reshape(-1, activation.shape[-1])
        if variant == "smooth":
            smooth = np.sqrt(np.abs(values).max(0) + 1e-3).astype(np.float32)
            values = values / smooth
        if variant == "split" and target.in_features == 64:
            outliers = np.array([7])
            values = values.copy()
            values[:, 7] = 0
        params = quant_params(float(values.min()), float(values.max()), symmetric)
        decisions.append(Decision(target, params, smooth=smooth, outliers=outliers))
    return decisions


@pytest.mark.parametrize("variant", ["plain", "smooth", "split"])
def test_ort_emission_matches_fp32(variant):
    x = _x()
    (want,) = run(ffn(), {"x": x})
    m = ffn()
    emit(m, _decisions(m, variant=variant), "ort")
    ops = op_counts(m)
    assert ops["com.microsoft::MatMulIntegerToFloat"] == 2
    assert "w1" not in m.graph.initializers and "w2" not in m.graph.initializers  # fp32 weights gone
    if variant == "split":
        assert ops["Gather"] == 1  # the outlier channel's fp32 side product
        assert ops.get("Mul", 0) == 0  # its zeroed weight row leaves it out of the int8 product: no Mul
    else:
        assert ops.get("Add", 0) == 0  # both biases folded into MatMulIntegerToFloat
    (got,) = run(m, {"x": x})
    assert _relative_error(got, want) < 0.06


def _relative_error(got, want):
    return float(np.abs(got - want).mean() / np.abs(want).mean())


def test_outlier_split_beats_plain_int8_on_an_outlier_channel():
    x = _x(outlier=True)
    (want,) = run(ffn(), {"x": x})
    errors = {}
    for variant in ("plain", "split"):
        m = ffn()
        emit(m, _decisions(m, variant=variant, outlier=True), "ort")
        errors[variant] = _relative_error(run(m, {"x": x})[0], want)
    assert errors["split"] < 0.75 * errors["plain"]


def test_qdq_symmetric_emission_is_int8_with_zero_point_zero():
    x = _x()
    (want,) = run(ffn(), {"x": x})
    m = ffn()
    emit(m, _decisions(m, symmetric=True, variant="split"), "qdq")
    ops = op_counts(m)
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4 and ops["Gather"] == 1
    assert not any(n.domain == "com.microsoft" for n in m.graph)
    for node in m.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = node.inputs[2].const_value.numpy()
            assert zero_point.dtype == np.int8 and not zero_point.any()
    (got,) = run(m, {"x": x})
    assert _relative_error(got, want) < 0.06
