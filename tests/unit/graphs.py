"""Tiny ONNX graphs built in code for pass unit tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, initializers=(), opset: int = 18, domains: dict[str, int] | None = None) -> ir.Model:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 10
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def tensor(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def value(name: str, dtype: int = TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def run(m: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def padded_encoder_feeds(names=("input_ids", "attention_mask", "token_type_ids"), batch: int = 2, seq: int = 9) -> dict[str, np.ndarray]:
    """Token feeds for a tiny encoder graph, the second row padded from position 5."""
    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), np.int64)
    mask[1, 5:] = 0
    feeds = {
        "input_ids": rng.integers(1000, 2000, (batch, seq)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }
    return {n: feeds[n] for n in names}
