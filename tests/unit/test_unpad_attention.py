"""Attention moved onto the packed rows (optimize/passes/unpad_attention.py): exact at real tokens
for fp32 and int8 attentions, any head count, unnamed nodes, rows whose logits all sit far below
zero (where the masked kernels' large negative fill, or a lift of the real keys, lets padded keys
in), a batch of one (the If's other branch) and a sequence with no real token; refused where its
output leaves the graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.passes.unpad import UnpadPass

C = 8
MASK = np.array([[1] * 6 + [0] * 4, [1] * 2 + [0] * 8, [0] * 3 + [1] * 5 + [0] * 2], np.int64)  # right, right, both sides


def _layers(heads=2, names=("att0",), level=0.0, int8=False, weight_zero=0, per_column=False, output_is_attention=False) -> ir.Model:
    """LayerNorm -> Attention (or SmoothQuant Mul -> QuantizeLinear -> QAttention) -> MatMul -> residual
    Add, per name. ``level`` moves every real logit by about -level^2 * 2 (Q bias +level, K bias
    -level): softmax ignores it, the padding mask must too."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32)]
    inits = [numpy_helper.from_array(np.ones(C, np.float32), "gamma"), numpy_helper.from_array(np.zeros(C, np.float32), "beta")]
    shapes, current = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("LayerNormalization", [current, "gamma", "beta"], [f"h{i}"], axis=-1))
        weight = rng.normal(size=(C, 3 * C)).astype(np.float32) * 0.3
        bias = rng.normal(size=3 * C).astype(np.float32) * 0.1
        bias[:C] += level
        bias[C : 2 * C] -= level
        inits.append(numpy_helper.from_array(bias, f"bias{i}"))
        if int8:
            inits += [numpy_helper.from_array(np.full(C, 2.0, np.float32), f"smooth{i}"),
                      numpy_helper.from_array(np.array(0.05, np.float32), f"x_scale{i}"), numpy_helper.from_array(np.array(128, np.uint8), f"x_zero{i}")]
            nodes += [helper.make_node("Mul", [f"h{i}", f"smooth{i}"], [f"s{i}"]),
                      helper.make_node("QuantizeLinear", [f"s{i}", f"x_scale{i}", f"x_zero{i}"], [f"q{i}"])]
            shapes += [(f"s{i}", TensorProto.FLOAT), (f"q{i}", TensorProto.UINT8)]
            scale = (np.abs(weight).max(0) if per_column else np.array(np.abs(weight).max())).astype(np.float32) / 100
            dtype = np.uint8 if weight_zero else np.int8
            quantized = np.clip(np.round(weight / scale) + weight_zero, *((0, 255) if weight_zero else (-127, 127))).astype(dtype)
            zero = np.full(3 * C, weight_zero, dtype) if per_column else np.array(weight_zero, dtype)
            inits += [numpy_helper.from_array(quantized, f"w{i}"), numpy_helper.from_array(scale, f"w_scale{i}"), numpy_helper.from_array(zero, f"w_zero{i}")]
            nodes.append(helper.make_node("QAttention", [f"q{i}", f"w{i}", f"bias{i}", f"x_scale{i}", f"w_scale{i}", "mask32", f"x_zero{i}", f"w_zero{i}"],
                                          [f"a{i}"], domain="com.microsoft", num_heads=heads, name=name))
        else:
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(helper.make_node("Attention", [f"h{i}", f"w{i}", f"bias{i}", "mask32"], [f"a{i}"], domain="com.microsoft", num_heads=heads, name=name))
        inits.append(numpy_helper.from_array(rng.normal(size=(C, C)).astype(np.float32), f"wo{i}"))
        nodes += [helper.make_node("MatMul", [f"a{i}", f"wo{i}"], [f"o{i}"]), helper.make_node("Add", [f"o{i}", f"h{i}"], [f"r{i}"])]
        shapes += [(f"h{i}", TensorProto.FLOAT), (f"a{i}", TensorProto.FLOAT), (f"o{i}", TensorProto.FLOAT), (f"r{i}", TensorProto.FLOAT)]
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", C])]
    if output_is_attention:
        outputs.append(helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["batch", "seq", C]))
    graph = helper.make_graph(
        nodes, "layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", C]), helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        outputs, inits, value_info=[helper.make_tensor_value_info(n, t, ["batch", "seq", C]) for n, t in shapes if not (output_is_attention and n == "a0")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 10
    return ir.from_proto(proto)


def _run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(
    "case",
    [
        {"heads": 1}, {"heads": 2}, {"heads": 8},
        {"level": 5.0}, {"level": 6.0},  # real logits near -50 and -72
        {"names": ("", "")},  # two unnamed attentions: names of their own
        {"int8": True}, {"int8": True, "per_column": True, "weight_zero": 128}, {"int8": True, "level": 6.0},
    ],
    ids=str,
)
def test_packed_attention_is_exact_at_real_tokens(case):
    model = _layers(**case)
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 10, C)).astype(np.float32), "attention_mask": MASK}
    (before,) = _run(model, feeds)
    unpad = UnpadPass()
    unpad(model)
    assert unpad.stats["attention"] == {"packed": len(case.get("names", ("att0",)))}, unpad.stats
    (after,) = _run(model, feeds)
    real = MASK.astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "mask",
    [MASK[:1], np.ones((1, 10), np.int64), np.array([[1] * 4 + [0] * 6, [0] * 10, [1] * 10], np.int64)],
    ids=["one padded sequence", "one sequence, no padding", "a sequence with no real token"],
)
def test_a_batch_of_one_and_an_empty_sequence(mask):
    model = _layers(names=("att0", "att1"), int8=True)
    feeds = {"x": np.random.default_rng(2).normal(size=(*mask.shape, C)).astype(np.float32), "attention_mask": mask}
    (before,) = _run(model, feeds)
    UnpadPass()(model)
    (after,) = _run(model, feeds)
    real = mask.astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-4, atol=1e-4)
    assert np.all(after[~real] == 0.0)


def test_an_attention_whose_output_leaves_the_graph_is_left_fused():
    model = _layers(output_is_attention=True)
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 10, C)).astype(np.float32), "attention_mask": MASK}
    before = _run(model, feeds)
    unpad = UnpadPass()
    unpad(model)
    assert unpad.stats["attention"]["packed"] == 0 and "graph output" in unpad.stats["attention"]["left"][0]
    after = _run(model, feeds)
    real = MASK.astype(bool)
    np.testing.assert_allclose(after[0][real], before[0][real], rtol=1e-5, atol=1e-5)
