import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from graphs import model, run, tensor, value
from optimize.passes.base import initializer_bytes, op_counts
from optimize.passes.weight_storage_int8 import WeightStorageInt8Pass


def _linear(weight: np.ndarray) -> ir.Model:
    return model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [value("x", shape=["n", weight.shape[0]])],
        [value("y", shape=["n", weight.shape[1]])],
        [tensor("w", weight)],
    )


def test_fp32_weights_are_stored_int8_and_rebuilt_per_column():
    rng = np.random.default_rng(0)
    weight = (rng.normal(0, 0.05, (256, 128)) * rng.uniform(0.1, 10, (1, 128))).astype(np.float32)  # columns of very different ranges
    m = _linear(weight)
    x = rng.normal(0, 1, (4, 256)).astype(np.float32)
    (want,) = run(m, {"x": x})
    before = initializer_bytes(m)
    storage = WeightStorageInt8Pass(min_elements=1000)
    assert storage(m).modified
    assert storage.stats["weights"] == 1
    assert initializer_bytes(m) < before * 0.3
    assert op_counts(m)["Cast"] == 1 and op_counts(m)["Mul"] == 1
    assert storage.stats["max_error_of_column_range"] <= 0.5 / 127 + 1e-6  # half a step of each column's own scale
    (got,) = run(m, {"x": x})
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.9999


def test_int8_weights_small_weights_and_shared_weights_are_left_alone():
    assert not WeightStorageInt8Pass(min_elements=1000)(_linear(np.ones((8, 4), np.float32))).modified
    shared = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("MatMul", ["x", "w"], ["z"])],
        [value("x", shape=["n", 64])],
        [value("y", shape=["n", 64]), value("z", shape=["n", 64])],
        [tensor("w", np.ones((64, 64), np.float32))],
    )
    assert not WeightStorageInt8Pass(min_elements=1000)(shared).modified
