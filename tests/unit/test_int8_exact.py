"""int8 products are exact on every CPU: the sessions this package builds widen int8 weights to
uint8 where ONNX Runtime's uint8 x int8 kernel saturates (x86 without VNNI or AMX)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimize.config import SessionConfig
from optimize.runtimes.int8_exact import int8_products_saturate, widen_int8_weights
from optimize.runtimes.ort import build_session

K, N, ROWS = 256, 64, 32


def _operands(bound: int = 127) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # large activations against large weights of the same sign: every pair of products passes 2^15
    activations = rng.integers(200, 256, size=(ROWS, K)).astype(np.uint8)
    weights = (rng.choice([-1, 1], size=(1, N)) * rng.integers(bound - 10, bound + 1, size=(K, N))).astype(np.int8)
    return activations, weights


def _matmul_integer_to_float(weights: np.ndarray, shared_twice: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zp", "w_zp"], ["y"], domain="com.microsoft", name="mm")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])]
    if shared_twice:  # a second product reading the same weight
        nodes.append(helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zp", "w_zp"], ["y2"], domain="com.microsoft", name="mm2"))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None, N]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])], outputs,
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array(1.0, np.float32), "a_scale"),
            numpy_helper.from_array(np.ones(N, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "a_zp"),
            numpy_helper.from_array(np.zeros(N, np.int8), "w_zp"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(payload: bytes, activations: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, {"a": activations})


def test_an_int8_product_through_the_packages_session_is_exact_on_this_cpu():
    """Fails on an AVX2-only CPU unless the weights are widened (a plain session is off by
    up to a quarter of the output there; on a VNNI CPU both are exact)."""
    activations, weights = _operands()
    exact = activations.astype(np.int64) @ weights.astype(np.int64)
    session = build_session(_matmul_integer_to_float(weights).SerializeToString(), SessionConfig(threads=1))
    np.testing.assert_array_equal(session.run(None, {"a": activations})[0], exact.astype(np.float32))


def test_widened_weights_give_the_exact_product_anywhere_and_a_shared_weight_is_widened_once():
    activations, weights = _operands()
    model = _matmul_integer_to_float(weights, shared_twice=True)
    assert widen_int8_weights(model) == 1
    kinds = {init.name: init.data_type for init in model.graph.initializer}
    assert "w" not in kinds and kinds["w_as_uint8"] == TensorProto.UINT8, kinds
    assert "w_zp" not in kinds, "the int8 zero point is no longer read and should be gone"
    zero_points = [numpy_helper.to_array(i) for i in model.graph.initializer if "zero_point" in i.name]
    assert len(zero_points) == 1 and zero_points[0].dtype == np.uint8 and zero_points[0].shape == (N,) and (zero_points[0] == 128).all()
    exact = (activations.astype(np.int64) @ weights.astype(np.int64)).astype(np.float32)
    for output in _run(model.SerializeToString(), activations):
        np.testing.assert_array_equal(output, exact)


def test_weights_within_the_saturation_bound_read_the_same_both_ways():
    """Where no pair can saturate (|w| <= 64), the widened graph equals the int8 one bit for bit:
    the rewrite changes the kernel, not the arithmetic."""
    activations, weights = _operands(bound=64)
    model = _matmul_integer_to_float(weights)
    before = _run(model.SerializeToString(), activations)[0]
    widen_int8_weights(model)
    np.testing.assert_array_equal(_run(model.SerializeToString(), activations)[0], before)


def test_a_session_without_exact_int8_keeps_the_stored_weights():
    _, weights = _operands()
    session = build_session(_matmul_integer_to_float(weights).SerializeToString(), SessionConfig(threads=1, exact_int8=False))
    assert session.get_inputs()[0].name == "a"  # built from the bytes as they are (nothing to compare on a VNNI CPU)


def test_which_cpus_saturate():
    assert int8_products_saturate("x86_64", frozenset({"avx2", "fma"}))
    assert int8_products_saturate("x86_64", frozenset({"avx2", "avx512f", "avx512bw"}))  # Skylake-SP: no VNNI
    assert not int8_products_saturate("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert not int8_products_saturate("x86_64", frozenset({"avx2", "avx_vnni"}))
    assert not int8_products_saturate("aarch64", frozenset())
    assert int8_products_saturate("AMD64", frozenset())  # Windows: flags unknown, taken to saturate


def test_a_qdq_graph_through_the_packages_session_is_exact_on_this_cpu():
    """trt-int8's form, checked in ONNX Runtime: int8 activations and weights in Q/DQ, which ORT
    fuses into the same uint8 x int8 kernel (off by up to 95% on an AVX2-only CPU)."""
    rng = np.random.default_rng(0)
    weights = (rng.choice([-1, 1], size=(1, N)) * rng.integers(117, 128, size=(K, N))).astype(np.int8)
    activations = rng.integers(100, 128, size=(ROWS, K)).astype(np.float32)  # scale 1: int8 100..127
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "one", "zero"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
            numpy_helper.from_array(np.ones(N, np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(N, np.int8), "w_zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    exact = (activations.astype(np.int64) @ weights.astype(np.int64)).astype(np.float32)
    session = build_session(model.SerializeToString(), SessionConfig(threads=1))
    np.testing.assert_allclose(session.run(None, {"x": activations})[0], exact, rtol=1e-6)


def test_a_qattention_weight_is_widened_with_the_same_result():
    """ort-int8's --fused-attention form: QAttention takes the uint8 weight and a per-column zero
    point of 128 and computes what it computed with the int8 weight (weights within +-64, where the
    int8 kernel cannot saturate, so both are exact)."""
    rng = np.random.default_rng(1)
    hidden, heads, batch, seq = 32, 4, 2, 5
    weights = rng.integers(-64, 65, size=(hidden, 3 * hidden)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node(
            "QAttention", ["x", "w", "bias", "x_scale", "w_scale", "", "x_zp", "w_zp"], ["y"],
            domain="com.microsoft", num_heads=heads, name="attention",
        )],
        "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [batch, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(rng.normal(size=3 * hidden).astype(np.float32), "bias"),
            numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
            numpy_helper.from_array(np.full(3 * hidden, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
            numpy_helper.from_array(np.zeros(3 * hidden, np.int8), "w_zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = rng.integers(0, 256, size=(batch, seq, hidden)).astype(np.uint8)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert widen_int8_weights(model) == 1
    attention = model.graph.node[0]
    assert attention.input[1] == "w_as_uint8" and attention.input[7].startswith("w_as_uint8_zero_point")
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
