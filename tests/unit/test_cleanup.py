import logging

import numpy as np
from onnx import helper

from graphs import model, run, tensor, value
from optimize.passes.base import op_counts
from optimize.passes.cleanup import CleanupPass


def _messy_graph():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0]),  # constant: foldable
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("MatMul", ["x_id", "w"], ["y0"]),
        helper.make_node("Add", ["y0", "bias_a"], ["y1"]),
        helper.make_node("Add", ["y1", "bias_b"], ["y"]),  # bias_b duplicates bias_a
        helper.make_node("Relu", ["x"], ["dead"]),  # feeds nothing
    ]
    inits = [tensor("w_t", w.T.copy()), tensor("bias_a", np.ones(3, np.float32)), tensor("bias_b", np.ones(3, np.float32))]
    return model(nodes, [value("x", shape=["n", 4])], [value("y", shape=["n", 3])], inits)


def test_cleanup_folds_dedupes_and_removes_dead_code():
    m = _messy_graph()
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    (before,) = run(m, {"x": x})

    cleanup = CleanupPass()
    result = cleanup(m)

    ops = op_counts(result.model)
    assert result.modified
    assert "Transpose" not in ops and "Identity" not in ops and "Relu" not in ops
    assert cleanup.stats["nodes_removed"] >= 3
    assert cleanup.stats["initializers_removed"] >= 1  # the duplicate bias
    (after,) = run(result.model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_cleanup_on_a_clean_graph_changes_nothing():
    m = model(
        [helper.make_node("Relu", ["x"], ["y"])], [value("x", shape=["n", 4])], [value("y", shape=["n", 4])]
    )
    cleanup = CleanupPass()
    assert not cleanup(m).modified
    assert cleanup.stats["nodes_removed"] == 0


def test_a_constant_node_with_several_outputs_is_left_to_run_without_a_console_warning(caplog):
    """DeBERTa normalises its relative position embeddings, a constant, with a LayerNormalization
    (three outputs): onnxscript's folder leaves it and warned on every export. The graph still
    computes the same; other warnings of that logger still come through."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("LayerNormalization", ["table", "scale", "shift"], ["normed", "mean", "inv_std"], axis=-1),
        helper.make_node("MatMul", ["x", "normed"], ["y"]),
    ]
    inits = [
        tensor("table", rng.standard_normal((4, 3)).astype(np.float32)),
        tensor("scale", np.ones(3, np.float32)),
        tensor("shift", np.zeros(3, np.float32)),
    ]
    m = model(nodes, [value("x", shape=["n", 4])], [value("y", shape=["n", 3])], inits)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (before,) = run(m, {"x": x})
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    with caplog.at_level(logging.WARNING, logger=folding.name):
        result = CleanupPass()(m)
        folding.warning("another notice")
    (after,) = run(result.model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == ["another notice"]
