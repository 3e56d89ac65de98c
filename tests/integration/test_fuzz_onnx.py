"""Fuzz: mutated ONNX files through `inspect` and the ort-fp32 pass pipeline.

Whatever the bytes, only the project's own errors may come out (OptimizeError subclasses,
which the CLI prints as one line): never a raw library exception, never a crash. The base is
a real exported BERT graph (one layer, vocabulary cut to 64 rows to keep each case fast).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimize.errors import OptimizeError
from optimize.inspection import describe, graph_lines
from optimize.passes.cleanup import CleanupPass
from optimize.passes.fusion import OrtFusionPass
from optimize.passes.pipeline import Pipeline
from optimize.untrusted import load_untrusted

#: the suite runs 400 cases to stay within its time budget; OPTIMIZE_FUZZ_CASES=2000 (or more) for a full run
FUZZ_CASES = int(os.environ.get("OPTIMIZE_FUZZ_CASES", "400"))
OPS = ["MatMul", "Add", "Gather", "Softmax", "LayerNormalization", "Reshape", "Transpose", "Erf", "Concat", "NoSuchOp", ""]
COUNTS = {"cases": 0, "loaded": 0, "pipeline_ran": 0, "project_errors": 0}


@pytest.fixture(scope="module")
def base_model(tiny_model_dir, tmp_path_factory) -> bytes:
    import tiny_models

    from optimize.config import ExportConfig
    from optimize.exporter import export, resolve

    folder = tiny_models.build("bert", tmp_path_factory.mktemp("fuzz") / "bert", layers=1)
    model = export(resolve(str(folder)), ExportConfig(seq_len=16, dynamic_probe_shapes=((1, 4),))).model
    import onnx_ir as ir

    proto = ir.to_proto(model)
    for tensor in proto.graph.initializer:
        if tensor.dims and tensor.dims[0] == 30522:  # the word embeddings: keep 64 rows
            rows = onnx.numpy_helper.to_array(tensor)[:64]
            tensor.CopyFrom(onnx.numpy_helper.from_array(rows, tensor.name))
    return proto.SerializeToString()


def _mutate_proto(data: bytes, draw) -> bytes:  # noqa: ANN001
    model = onnx.load_from_string(data)
    graph = model.graph
    action = draw(st.sampled_from(["op", "drop_node", "input", "dims", "dtype", "raw", "opset", "output", "attr", "external", "dup"]))
    node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
    tensor = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))] if graph.initializer else None
    if action == "op":
        node.op_type = draw(st.sampled_from(OPS))
    elif action == "drop_node":
        graph.node.remove(node)
    elif action == "input" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(["", "missing_value", graph.input[0].name]))
    elif action == "dims" and tensor is not None:
        tensor.dims[:] = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3))
    elif action == "dtype" and tensor is not None:
        tensor.data_type = draw(st.integers(0, 22))
    elif action == "raw" and tensor is not None and tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: draw(st.integers(0, len(tensor.raw_data)))]
    elif action == "opset":
        model.opset_import[0].version = draw(st.integers(1, 30))
    elif action == "output":
        del graph.output[:]
    elif action == "attr" and node.attribute:
        attribute = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        attribute.i, attribute.f = draw(st.integers(-(2**31), 2**31 - 1)), draw(st.floats(allow_nan=True))
    elif action == "external" and tensor is not None:
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", draw(st.sampled_from(["../../etc/passwd", "/etc/hostname", "missing.bin", "x/../../y"]))
    elif action == "dup":
        graph.node.append(node)
    return model.SerializeToString()


def _mutate_bytes(data: bytes, draw) -> bytes:  # noqa: ANN001
    action = draw(st.sampled_from(["flip", "truncate", "splice"]))
    buffer = bytearray(data)
    if action == "flip":
        for _ in range(draw(st.integers(1, 16))):
            buffer[draw(st.integers(0, len(buffer) - 1))] = draw(st.integers(0, 255))
        return bytes(buffer)
    if action == "truncate":
        return bytes(buffer[: draw(st.integers(0, len(buffer) - 1))])
    start = draw(st.integers(0, len(buffer) - 1))
    return bytes(buffer[:start]) + draw(st.binary(min_size=1, max_size=64)) + bytes(buffer[start:])


@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_mutated_onnx_gives_only_project_errors(data, base_model, tmp_path_factory):
    draw = data.draw
    mutated = _mutate_proto(base_model, draw) if draw(st.booleans()) else _mutate_bytes(base_model, draw)
    folder = tmp_path_factory.mktemp("case", numbered=True)
    path = folder / "model.onnx"
    path.write_bytes(mutated)
    COUNTS["cases"] += 1
    try:
        describe(path)
        model = load_untrusted(path)
        COUNTS["loaded"] += 1
        Pipeline([CleanupPass(), OrtFusionPass(expected=()), CleanupPass()]).run(model)
        graph_lines(model)
        COUNTS["pipeline_ran"] += 1
    except OptimizeError as error:
        COUNTS["project_errors"] += 1
        assert "\n" not in error.one_line()
    finally:
        path.unlink()
        folder.rmdir()


def test_fuzz_counts_are_reported():
    """Runs after the fuzz test (file order): print what the fuzz did, for the record."""
    if COUNTS["cases"]:
        print(f"fuzz: {COUNTS}")
        assert COUNTS["cases"] >= FUZZ_CASES
        assert COUNTS["project_errors"] > 0 and COUNTS["loaded"] > 0
    assert np.isfinite(1.0)
