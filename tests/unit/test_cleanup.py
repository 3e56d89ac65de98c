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
