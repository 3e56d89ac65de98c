"""The residual-bias fold: exact on tiny real encoders, and a site it cannot compensate is left alone."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from graphs import model, padded_encoder_feeds, run, tensor, value
from optimize.config import ExportConfig
from optimize.exporter import export, resolve
from optimize.passes.attention_mask import AttentionMaskIndexPass
from optimize.passes.base import op_counts
from optimize.passes.cleanup import CleanupPass
from optimize.passes.fusion import OrtFusionPass
from optimize.passes.residual_bias import ResidualBiasFoldPass


def _fused(folder) -> tuple[ir.Model, tuple[str, ...]]:
    loaded = resolve(str(folder))
    exported = export(loaded, ExportConfig(dynamic_probe_shapes=((1, 4),)))
    m = exported.model
    # random-weight checkpoints start with zero biases, which would make any fold look exact
    rng = np.random.default_rng(3)
    for name, init in m.graph.initializers.items():
        if name.endswith("bias"):
            shape = init.const_value.numpy().shape
            init.const_value = ir.tensor(rng.normal(scale=0.5, size=shape).astype(np.float32), name=name)
    for step in (CleanupPass(), OrtFusionPass(), CleanupPass(), AttentionMaskIndexPass()):
        step(m)
    return m, loaded.input_names


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_folds_every_block_output_bias_without_changing_outputs(kind, tiny_model_dir):
    m, names = _fused(tiny_model_dir(kind))
    feeds = padded_encoder_feeds(names)
    (before,) = run(m, feeds)
    adds_before = op_counts(m)["Add"]

    fold = ResidualBiasFoldPass()
    fold(m)

    # two layers, two blocks each: every block's output bias is folded into the norm before it;
    # the last norm is the graph's output and has no block after it
    assert fold.stats == {"folded": 4, "skipped": {"output of the graph": 1}}
    assert op_counts(m)["Add"] == adds_before - 4
    (after,) = run(m, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)  # padded positions included


def _block(extra_reader: bool) -> ir.Model:
    """LN -> (MatMul + bias -> Relu -> MatMul + bias) + residual -> LN: a post-LN block in miniature."""
    rng = np.random.default_rng(1)
    d = 8
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g0", "b0"], ["r"], axis=-1),
        helper.make_node("MatMul", ["r", "w_in"], ["h0"]),
        helper.make_node("Add", ["h0", "b_in"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w_out"], ["o0"]),
        helper.make_node("Add", ["o0", "b_out"], ["o1"]),
        helper.make_node("Add", ["o1", "r"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "g1", "b1"], ["y"], axis=-1),
    ]
    outputs = [value("y", shape=[2, 3, d])]
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["r"], ["side"]))
        outputs.append(value("side", shape=[2, 3, d]))
    inits = [
        tensor("g0", rng.uniform(0.5, 1.5, d).astype(np.float32)),
        tensor("b0", rng.normal(size=d).astype(np.float32)),
        tensor("w_in", rng.normal(size=(d, d)).astype(np.float32)),
        tensor("b_in", rng.normal(size=d).astype(np.float32)),
        tensor("w_out", rng.normal(size=(d, d)).astype(np.float32)),
        tensor("b_out", rng.normal(size=d).astype(np.float32)),
        tensor("g1", np.ones(d, np.float32)),
        tensor("b1", np.zeros(d, np.float32)),
    ]
    return model(nodes, [value("x", shape=[2, 3, d])], outputs, inits)


def test_a_plain_matmul_block_is_folded_exactly():
    m = _block(extra_reader=False)
    x = {"x": np.random.default_rng(2).normal(size=(2, 3, 8)).astype(np.float32)}
    (before,) = run(m, x)
    fold = ResidualBiasFoldPass()
    assert fold(m).modified
    assert fold.stats["folded"] == 1
    assert op_counts(m)["Add"] == 2  # the projection's bias and the residual; the output bias is gone
    (after,) = run(m, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(ir.to_proto(m), full_check=True)


def test_a_norm_read_by_anything_else_is_left_alone():
    m = _block(extra_reader=True)
    fold = ResidualBiasFoldPass()
    assert not fold(m).modified
    assert fold.stats["folded"] == 0
    assert fold.stats["skipped"]["Sigmoid reads the normalized output"] == 1
    assert op_counts(m)["Add"] == 3
