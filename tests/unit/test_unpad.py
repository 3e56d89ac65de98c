"""The unpadding pass: real tokens only through the token-wise nodes, same outputs at real positions."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from graphs import model, run, tensor, value
from optimize.config import ExportConfig
from optimize.exporter import export, resolve
from optimize.passes.attention_mask import AttentionMaskIndexPass
from optimize.passes.base import op_counts
from optimize.passes.cleanup import CleanupPass
from optimize.passes.fusion import OrtFusionPass
from optimize.passes.unpad import UnpadPass


def _fused(folder) -> tuple[ir.Model, tuple[str, ...]]:
    loaded = resolve(str(folder))
    m = export(loaded, ExportConfig(dynamic_probe_shapes=((1, 4),))).model
    for step in (CleanupPass(), OrtFusionPass(), CleanupPass(), AttentionMaskIndexPass()):
        step(m)
    return m, loaded.input_names


def _feeds(names, lengths: list[int], seq: int) -> dict[str, np.ndarray]:
    """Rows of the given real lengths, padded to ``seq``; ids inside every tiny vocabulary."""
    rng = np.random.default_rng(0)
    mask = np.array([[1] * n + [0] * (seq - n) for n in lengths], np.int64)
    feeds = {
        "input_ids": rng.integers(5, 900, mask.shape).astype(np.int64) * mask + (1 - mask),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
    }
    return {n: feeds[n] for n in names}


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_outputs_at_real_positions_are_unchanged(kind, tiny_model_dir):
    m, names = _fused(tiny_model_dir(kind))
    feeds = _feeds(names, [11, 5, 3], 11)
    (before,) = run(m, feeds)

    unpad = UnpadPass()
    unpad(m)

    # every MatMul of the layers reads packed [tokens, C] rows, Q/K/V included; the attention
    # too, one sequence at a time (an If: one sequence, or a Loop over them), mask-free
    packed_matmuls = [n for n in m.graph if n.op_type == "MatMul" and len(n.inputs[0].shape or ()) == 2]
    assert len(packed_matmuls) == 12, op_counts(m)  # 2 layers x (Q, K, V, attention output, FFN in, FFN out)
    ops, inner = op_counts(m), op_counts(m, in_subgraphs=True)
    assert ops["If"] == 2 and not ops["com.microsoft::Attention"] and not ops["com.microsoft::MultiHeadAttention"], ops
    assert inner["com.microsoft::MultiHeadAttention"] == 4 and inner["Loop"] == 2, inner  # per layer: one sequence, each of several
    unpacks = [n.name for n in m.graph if n.name.endswith("_unpack")]
    assert len(unpacks) == 1, unpacks  # the graph output's alone: nothing goes back to the padded layout for the attention
    assert unpad.stats["attention"] == {"packed": 2}
    assert unpad.stats["packed_nodes"] > 0
    (after,) = run(m, feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-5, atol=1e-5)
    assert np.all(after[~real] == 0.0)  # padded positions are zeros, not computed


def test_fused_attention_stays_when_asked(tiny_model_dir):
    """--fused-attention: ONNX Runtime's fused Attention on the padded layout, the rest unpadded."""
    m, names = _fused(tiny_model_dir("bert"))
    feeds = _feeds(names, [7, 2], 7)
    (before,) = run(m, feeds)
    unpad = UnpadPass(attention=False)
    unpad(m)
    ops = op_counts(m)
    assert ops["com.microsoft::Attention"] == 2 and not ops["com.microsoft::MultiHeadAttention"], ops
    assert unpad.stats["attention"] == "fused, padded (off)"
    (after,) = run(m, feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-5, atol=1e-5)


def test_outputs_of_different_widths_each_get_their_padded_layout(tiny_model_dir):
    """Token classification: hidden states (64 wide) return to the padded layout before each
    attention, per-token logits (3 wide) at the output; the mask's shape is computed once for
    both widths (a second Shape node of the same name made an invalid graph)."""
    m, names = _fused(tiny_model_dir("bert", head="token"))
    feeds = _feeds(names, [9, 4], 9)
    before = run(m, feeds)
    UnpadPass()(m)
    onnx.checker.check_model(ir.to_proto(m))
    after = run(m, feeds)
    assert [a.shape for a in after] == [(2, 9, 3)]
    real = feeds["attention_mask"].astype(bool)
    for a, b in zip(after, before):
        np.testing.assert_allclose(a[real], b[real], rtol=1e-5, atol=1e-5)


def test_unpadded_graph_runs_at_every_shape_even_without_padding(tiny_model_dir):
    """Batches without padding too: the same outputs as the padded graph."""
    m, names = _fused(tiny_model_dir("bert"))
    padded = ir.from_proto(ir.to_proto(m))
    UnpadPass()(m)
    for batch, seq in ((1, 1), (1, 7), (4, 2)):
        feeds = _feeds(names, [seq] * batch, seq)
        (out,) = run(m, feeds)
        assert out.shape == (batch, seq, 64) and np.isfinite(out).all()
        np.testing.assert_allclose(out, run(padded, feeds)[0], rtol=1e-5, atol=1e-5)


def test_a_node_that_mixes_tokens_stays_on_the_padded_layout():
    """A Softmax over the sequence axis is not token-wise: it must read the padded tensor."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["s"], axis=1),
        helper.make_node("Add", ["s", "b"], ["y"]),
    ]
    m = model(
        nodes,
        [value("x", shape=["batch", "sequence", 4]), value("attention_mask", 7, ["batch", "sequence"])],
        [value("y", shape=["batch", "sequence", 4])],
        [tensor("w", rng.normal(size=(4, 4)).astype(np.float32)), tensor("b", rng.normal(size=4).astype(np.float32))],
    )
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.int64)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    (before,) = run(m, {"x": x, "attention_mask": mask})
    UnpadPass()(m)
    softmax = next(n for n in m.graph if n.op_type == "Softmax")
    assert len(softmax.inputs[0].shape) == 3
    (after,) = run(m, {"x": x, "attention_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-6, atol=1e-6)


def test_a_graph_without_a_mask_input_is_left_alone():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = model(nodes, [value("x", shape=["batch", "sequence", 4])], [value("y", shape=["batch", "sequence", 4])])
    unpad = UnpadPass()
    assert not unpad(m).modified
    assert unpad.stats["packed_nodes"] == 0


def test_int8_outlier_channels_run_on_the_packed_rows():
    """A layer whose outlier channels run in fp32 beside the int8 product (a Gather of those
    channels, a MatMul, an Add) stays on the packed rows, as emitted: the emitter's new values
    and constants carry no shape of their own, and once they kept the whole FFN padded."""
    from test_emit import _decisions, _x, ffn

    from optimize.quantization.emit import emit

    m = ffn()
    emit(m, _decisions(m, variant="split", outlier=True), "ort")
    m.graph.inputs.append(ir.Value(name="attention_mask", shape=ir.Shape(["b", "s"]), type=ir.TensorType(ir.DataType.INT64)))
    x = _x(outlier=True)
    mask = np.ones(x.shape[:2], np.int64)
    mask[1, 2:] = 0
    (before,) = run(m, {"x": x, "attention_mask": mask})
    unpad = UnpadPass()
    unpad(m)
    outlier_gather = next(n for n in m.graph if n.op_type == "Gather" and n.attributes.get_int("axis", 0) == -1)
    assert len(outlier_gather.inputs[0].shape) == 2  # reads the packed rows
    assert unpad.stats["unpacked_outputs"] == 1  # only the graph's output goes back to the padded layout
    (after,) = run(m, {"x": x, "attention_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-5, atol=1e-5)
