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


def _run_as_written(m: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Q/DQ computed as written (not fused into ORT's int8 kernels, which saturate on CPUs
    without VNNI): what TensorRT computes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(ir.to_proto(m).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _emulated(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray | None, float, float]]) -> np.ndarray:
    """The int8 arithmetic by hand: per layer (weight, bias, scale, shift), input x + shift on the
    symmetric grid, weight per column, bias less shift x the int8 weight's column sums; ReLU between."""
    from optimize.calibration.ranges import quantize_weight

    for i, (weight, bias, scale, shift) in enumerate(layers):
        if i:
            x = np.maximum(x, 0)
        q, scales = quantize_weight(weight, axis=1)
        w = q.astype(np.float32) * scales
        xq = np.clip(np.round((x + shift) / scale), -128, 127) * scale
        x = xq @ w + (0 if bias is None else bias) - shift * w.sum(axis=0)
    return x


@pytest.mark.parametrize("with_bias", [True, False])
def test_qdq_centring_is_taken_back_in_the_bias_and_beats_a_one_sided_range(with_bias):
    from optimize.calibration.ranges import centred_params

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y0" if with_bias else "y"]),
    ] + ([helper.make_node("Add", ["y0", "b2"], ["y"])] if with_bias else [])
    inits = [tensor("w1", W1), tensor("b1", B1), tensor("w2", W2)] + ([tensor("b2", B2)] if with_bias else [])

    def build() -> ir.Model:
        return model(nodes, [value("x", shape=["b", "s", 64])], [value("y", shape=["b", "s", 64])], inits)

    x = _x()
    (want,) = run(build(), {"x": x})
    hidden = np.maximum(x @ W1 + B1, 0)  # one-sided: half of a symmetric grid's codes unused
    errors, layers = {}, []
    for centred in (False, True):
        m = build()
        decisions = []
        for target, activation in zip(find_targets(m), [x, hidden]):
            low, high = float(activation.min()), float(activation.max())
            # the first layer's input is symmetric already: centred alike in both, so the
            # difference is the one-sided layer's
            first = activation is x
            params, shift = centred_params(low, high) if centred or first else (quant_params(low, high, True), 0.0)
            decisions.append(Decision(target, params, shift=shift))
            if centred:
                layers.append((W1 if first else W2, B1 if first else (B2 if with_bias else None), params.scale, shift))
        emit(m, decisions, "qdq")
        got = _run_as_written(m, {"x": x})
        errors[centred] = _relative_error(got, want)
        if centred:
            # the shifts' two Adds, b1's, and b2's (the shift folded into it) or, with no bias,
            # the correction's own
            assert op_counts(m)["Add"] == 4
            np.testing.assert_allclose(got, _emulated(x, layers), rtol=0, atol=2e-4)
    # the ReLU output's step halves; the weights' own rounding, alike in both, is the rest
    assert errors[True] < 0.9 * errors[False]
