import numpy as np
from onnx import TensorProto, helper

from graphs import model, run, tensor, value
from optimize.passes.base import initializer_bytes, op_counts
from optimize.passes.embedding_int8 import EmbeddingInt8Pass


def test_large_tables_become_int8_rows_with_scales():
    table = np.random.default_rng(0).normal(0, 0.05, (5000, 64)).astype(np.float32)
    m = model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [value("ids", TensorProto.INT64, ["b", "s"])],
        [value("y", shape=["b", "s", 64])],
        [tensor("table", table)],
    )
    ids = np.array([[0, 17, 4999], [3, 3, 3]], np.int64)
    (want,) = run(m, {"ids": ids})
    before = initializer_bytes(m)
    embedding = EmbeddingInt8Pass(min_elements=1000)
    embedding(m)
    assert embedding.stats["tables"] == ["table"]
    assert initializer_bytes(m) < before * 0.3
    assert op_counts(m)["Gather"] == 2
    (got,) = run(m, {"ids": ids})
    assert np.abs(got - want).max() <= np.abs(table).max() / 127 / 2 + 1e-6


def test_small_tables_stay_fp32():
    m = model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [value("ids", TensorProto.INT64, ["n"])],
        [value("y", shape=["n", 4])],
        [tensor("table", np.ones((10, 4), np.float32))],
    )
    assert not EmbeddingInt8Pass()(m).modified
