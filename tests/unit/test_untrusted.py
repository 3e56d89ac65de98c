"""load_untrusted refuses what the ONNX checker lets through but libraries downstream crash on."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.errors import InputError
from optimize.untrusted import load_untrusted


def _proto() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    proto = helper.make_model(graph, producer_name="optimize", opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 10
    return proto


def test_a_valid_file_loads(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_proto(), path)
    model = load_untrusted(path)
    assert model.graph.initializers["w"].const_value.numpy().shape == (2, 3)


def test_text_that_is_not_utf8_is_refused(tmp_path):
    # protobuf keeps proto2 strings it cannot decode as bytes; onnx_ir's serializer then raised
    path = tmp_path / "model.onnx"
    path.write_bytes(_proto().SerializeToString().replace(b"optimize", b"optimiz\xd3"))
    with pytest.raises(InputError, match="not UTF-8 in onnx.ModelProto.producer_name") as refused:
        load_untrusted(path)
    assert not refused.value.internal


@pytest.mark.parametrize(
    ("dims", "elements", "raw", "says"),
    [
        # the checker refuses too little data; too much it lets through, and numpy's reshape
        # downstream raised (the fuzz found a [46, 46] tensor holding 64 x 64 values)
        ([2, 3], 5, True, "fails the ONNX checker"),
        ([2, 3], 7, True, "tensor 'w' does not hold 6 elements of type FLOAT"),
        ([2, 2], 6, True, "tensor 'w' does not hold 4 elements of type FLOAT"),
        ([2, 3], 8, False, "tensor 'w' does not hold 6 elements of type FLOAT"),
    ],
)
def test_a_tensor_without_the_elements_its_dims_promise_is_refused(dims, elements, raw, says, tmp_path):
    proto = _proto()
    weight = proto.graph.initializer[0]
    values = np.arange(elements, dtype=np.float32)
    if raw:
        weight.raw_data = values.tobytes()
    else:
        weight.ClearField("raw_data")
        weight.float_data[:] = values.tolist()
    weight.dims[:] = dims
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    with pytest.raises(InputError, match=says) as refused:
        load_untrusted(path)
    assert not refused.value.internal
