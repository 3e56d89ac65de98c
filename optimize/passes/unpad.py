"""No work spent on padding: run the token-wise part of the encoder on real tokens only.

In a batch of real sentences most positions are padding, yet every projection, FFN and norm
runs on them. This pass (the "effective transformer" of FasterTransformer and
text-embeddings-inference) packs the hidden states to ``[tokens, channels]`` through the
attention mask before the first token-wise node, keeps them packed through every node that
treats each token on its own (MatMul with a constant weight, bias and residual Adds, norms,
Gelu, static per-tensor QuantizeLinear, MatMulIntegerToFloat, a Gather of channels), and unpacks them back to
``[batch, sequence, channels]`` only where a node mixes tokens (attention) or the graph
returns them.

    idx = NonZero(Reshape(attention_mask, [-1]))          the real positions, once per run
    row = cumsum(mask) - 1 where real, else tokens        each position's packed row, once per run
    packed = Gather(Reshape(x, [-1, C]), idx)             before the token-wise region
    padded = Reshape(Gather(Concat(packed, 0), row), x)   before attention and the outputs

(The unpack is a Gather from the packed rows and one row of zeros, not a ScatterND into
zeros: at batch 8 and 32 of real sentences ONNX Runtime's ConstantOfShape + ScatterND took
3x as long, 2.6 ms against 0.86 ms for 1,864 tokens of 1,176 channels in 32 x 128.)

Each fused attention that reads an unpacked tensor is rewritten too (unpad_attention.py): its
Q/K/V projection moves onto the packed rows, and its attention runs on them one sequence at a
time (ONNX Runtime's mask-free flash kernel on each sequence's rows), so the packed rows go
through every layer and are unpacked only for the graph's outputs.

Outputs at real positions are those of the padded graph; at padded positions they are 0
(what a masked mean pool or a CLS pool reads is unchanged; parity compares real tokens).
Which nodes count as token-wise is decided per node from its op and the shapes of its
inputs: a node the pass does not know stays on the padded layout, so an unknown graph is
left correct, only less packed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from optimize.passes import unpad_attention
from optimize.passes.base import OptimizePass

#: elementwise ops whose every non-constant input is a [batch, sequence, C] activation
_ELEMENTWISE = {
    ("", "Add"), ("", "Sub"), ("", "Mul"), ("", "Div"), ("", "Relu"), ("", "Tanh"), ("", "Erf"),
    ("", "Sigmoid"), ("", "Sqrt"), ("", "Cast"), ("", "Identity"), ("", "Gelu"),
    ("com.microsoft", "BiasGelu"), ("com.microsoft", "FastGelu"), ("com.microsoft", "Gelu"),
}
#: the first input is the activation, the rest constants (weights, scales, zero points)
_FIRST_INPUT_ONLY = {("", "MatMul"), ("com.microsoft", "MatMulIntegerToFloat"), ("", "QuantizeLinear"), ("", "DequantizeLinear")}


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def is_constant(value: ir.Value | None) -> bool:
    """An initializer, or computed from initializers only (a weight stored int8 and widened)."""
    if value is None or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and not value.is_graph_input() and all(is_constant(v) for v in producer.inputs)


def _rank(value: ir.Value) -> int | None:
    if value.shape is not None:
        return len(value.shape)
    return None if value.const_value is None else len(value.const_value.shape)


class UnpadPass(OptimizePass):
    name = "unpad"

    def __init__(self, mask_input: str = "attention_mask", attention: bool = True) -> None:
        super().__init__()
        self.mask_input = mask_input
        self.attention = attention  # also move fused attentions' Q/K/V projections onto the packed rows

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        mask = next((v for v in graph.inputs if v.name == self.mask_input), None)
        if mask is None or mask.shape is None or len(mask.shape) != 2:
            self.stats = {"packed_nodes": 0, "reason": f"no 2-D {self.mask_input} input"}
            return False
        batch, sequence = mask.shape[0], mask.shape[1]

        def token_major(value: ir.Value | None) -> bool:
            """A [batch, sequence, C] activation with a static channel count."""
            return (
                value is not None
                and value.shape is not None
                and len(value.shape) == 3
                and value.shape[0] == batch
                and value.shape[1] == sequence
                and isinstance(value.shape[2], int)
            )

        _fill_shapes(graph, token_major)
        region = _without_dead_ends(graph, [n for n in graph if self._token_wise(n, token_major)])
        if not region:
            self.stats = {"packed_nodes": 0, "reason": "no token-wise node on [batch, sequence, C] activations"}
            return False
        inside = set(map(id, region))
        builder = _Packing(graph, mask)
        for node in region:
            if node.attributes.get_int("axis", -1) == 2:  # the channel axis, which packed is the last
                node.attributes["axis"] = ir.AttrInt64("axis", -1)
            for index, value in enumerate(node.inputs):
                if value is None or is_constant(value):
                    continue
                producer = value.producer()
                if producer is not None and id(producer) in inside:
                    continue  # already packed: produced inside the region
                node.replace_input_with(index, builder.pack(value))
        for node in region:
            for value in node.outputs:
                channels = value.shape[2]  # type: ignore[index]
                value.shape = ir.Shape([ir.SymbolicDim("tokens"), channels])
                outside = [(user, i) for user, i in value.uses() if id(user) not in inside]
                is_output = value in graph.outputs
                if not outside and not is_output:
                    continue
                padded = builder.unpack(value, channels, batch, sequence)
                for user, i in outside:
                    user.replace_input_with(i, padded)
                if is_output:
                    position = graph.outputs.index(value)
                    name = value.name
                    value.name = f"{name}_packed"
                    padded.name = name
                    graph.outputs[position] = padded
        attention: dict[str, Any] = {}
        if self.attention:
            attention = unpad_attention.pack_attentions(graph, mask, builder, lambda n: self._token_wise(n, token_major))
        builder.finish(region[0])
        if attention.get("packed") or attention.get("left"):
            # the unpacks the rewritten attentions read before, and anything a refused one left
            onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
        # counted last: the attention rewrite drops the unpacks that fed the attentions
        unpacked = sum(1 for gather in builder.unpacks if gather.graph is graph)
        self.stats = {"packed_nodes": len(region), "packed_inputs": len(builder.packed), "unpacked_outputs": unpacked, "attention": attention if self.attention else "fused, padded (off)"}
        return True

    @staticmethod
    def _token_wise(node: ir.Node, token_major) -> bool:  # noqa: ANN001
        key = (_domain(node), node.op_type)
        if not node.outputs or not all(token_major(v) for v in node.outputs):
            return False
        if key in _FIRST_INPUT_ONLY:
            first, rest = node.inputs[0], node.inputs[1:]
            if not token_major(first) or not all(is_constant(v) for v in rest):
                return False
            if key in (("", "QuantizeLinear"), ("", "DequantizeLinear")):  # per-tensor only: no axis to move
                return all(v is None or _rank(v) in (0, None) or (v.shape is not None and v.shape.numel() == 1) for v in rest)
            return True
        if key == ("", "LayerNormalization"):
            axis = node.attributes.get_int("axis", -1)
            return axis in (-1, 2) and token_major(node.inputs[0]) and all(is_constant(v) for v in node.inputs[1:])
        if key == ("", "Gather"):  # channels picked by constant indices (int8's fp32 outlier channels)
            indices = node.inputs[1]
            return (
                node.attributes.get_int("axis", 0) in (-1, 2)
                and token_major(node.inputs[0])
                and is_constant(indices)
                and indices is not None
                and _rank(indices) == 1
            )
        if key in _ELEMENTWISE:
            activations = [v for v in node.inputs if v is not None and not is_constant(v)]
            constants_ok = all(_rank(v) in (0, 1) for v in node.inputs if v is not None and is_constant(v))
            return bool(activations) and all(token_major(v) for v in activations) and constants_ok
        return False


def _fill_shapes(graph: ir.Graph, token_major) -> None:  # noqa: ANN001
    """Earlier rewrites (fusions, the bias fold) leave some new values without a shape; a token-wise
    node's output is its activation's shape with the weight's width (MatMul) or unchanged."""
    for node in graph:
        if len(node.outputs) != 1 or node.outputs[0].shape is not None:
            continue
        key = (_domain(node), node.op_type)
        first = node.inputs[0] if node.inputs else None
        if not token_major(first):
            continue
        assert first is not None and first.shape is not None
        if key in (("", "MatMul"), ("com.microsoft", "MatMulIntegerToFloat")):
            weight = _declared_shape(node.inputs[1])
            if weight is None or len(weight) != 2 or not isinstance(weight[1], int):
                continue
            node.outputs[0].shape = ir.Shape([first.shape[0], first.shape[1], weight[1]])
        elif key == ("", "Gather"):
            picked = _declared_shape(node.inputs[1])
            if picked is None or len(picked) != 1 or not isinstance(picked[0], int):
                continue
            node.outputs[0].shape = ir.Shape([first.shape[0], first.shape[1], picked[0]])
        elif key in _ELEMENTWISE or key == ("", "LayerNormalization") or key in _FIRST_INPUT_ONLY:
            node.outputs[0].shape = ir.Shape(list(first.shape))
        if node.outputs[0].dtype is None:
            node.outputs[0].dtype = _output_dtype(node, key, first)


def _declared_shape(value: ir.Value | None) -> ir.Shape | None:
    """A value's shape, or its initializer's: constants a pass just made carry no shape of their own."""
    if value is None:
        return None
    if value.shape is not None:
        return value.shape
    return None if value.const_value is None else value.const_value.shape


def _output_dtype(node: ir.Node, key: tuple[str, str], first: ir.Value) -> ir.DataType | None:
    if key == ("", "Cast"):
        return ir.DataType(node.attributes.get_int("to", first.dtype or 1))
    if key == ("", "QuantizeLinear"):
        zero_point = node.inputs[2] if len(node.inputs) > 2 else None
        return zero_point.dtype if zero_point is not None and zero_point.dtype is not None else ir.DataType.UINT8
    if key in (("", "DequantizeLinear"), ("com.microsoft", "MatMulIntegerToFloat")):
        return ir.DataType.FLOAT
    return first.dtype


def _without_dead_ends(graph: ir.Graph, region: list[ir.Node]) -> list[ir.Node]:
    """Drop region nodes whose results all leave the region at once (the embeddings' first Add,
    say, read by the position Add that is not token-major): packing them would only be undone."""
    kept = list(region)
    while True:
        inside = set(map(id, kept))
        graph_outputs = set(map(id, graph.outputs))
        trimmed = [
            n for n in kept
            if any(id(v) in graph_outputs or any(id(user) in inside for user, _ in v.uses()) for v in n.outputs)
        ]
        if len(trimmed) == len(kept):
            return kept
        kept = trimmed


class _Packing:
    """The index and the pack / unpack nodes, inserted at the top of the graph as needed."""

    def __init__(self, graph: ir.Graph, mask: ir.Value) -> None:
        self.graph, self.mask = graph, mask
        self.nodes: list[ir.Node] = []  # the shared index computation, inserted by finish()
        flat_shape = self.constant("unpad_flat", np.array([-1], np.int64))
        flat_mask = self._node("Reshape", [mask, flat_shape], "unpad_mask_flat")
        positions = self._node("NonZero", [flat_mask], "unpad_positions")  # [1, tokens]
        self.flat_mask = flat_mask
        self.index = self._node("Reshape", [positions, flat_shape], "unpad_index")  # [tokens]
        self.rows: ir.Value | None = None  # [batch * sequence]: each position's packed row, made on first use
        self.packed: dict[int, ir.Value] = {}  # id(padded value) -> its packed twin, made once
        self.zero_rows: dict[tuple[int, ir.DataType], ir.Value] = {}
        self.padded_shapes: dict[int, ir.Value] = {}
        self.batch_sequence: ir.Value | None = None  # Shape(mask), made once for every channel count
        self.unpacked: dict[int, ir.Value] = {}  # id(padded value) -> the packed value it was made from
        self.sequence_bounds: tuple[ir.Value, ir.Value, ir.Value, ir.Value] | None = None
        self.unpacks: list[ir.Node] = []  # each unpack's Gather

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        if name not in self.graph.initializers:
            self.graph.register_initializer(value)
        return self.graph.initializers[name]

    def _node(self, op: str, inputs: list, name: str, attributes: dict | None = None) -> ir.Value:
        node = ir.node(op, inputs, attributes=attributes or {}, name=name)
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]

    def _rows(self) -> ir.Value:
        """Each position's row among the packed ones plus a zero row at the end: a real position's
        rank among the real ones, a padded position the index one past the last (``tokens``)."""
        if self.rows is None:
            # Not(Equal(mask, 0)), not Cast(mask, bool): a Cast reading a Cast is what the fp16
            # graph checks count as a chain
            dtype = self.mask.dtype or ir.DataType.INT64
            zero = self.constant(f"unpad_mask_zero_{dtype.name}", np.zeros((), dtype.numpy()))
            padding = self._node("Equal", [self.flat_mask, zero], "unpad_padding")
            real = self._node("Not", [padding], "unpad_real")
            ones = self._node("Cast", [real], "unpad_real_count", {"to": ir.DataType.INT64})
            axis = self.constant("unpad_axis_0", np.array(0, np.int64))
            rank = self._node("CumSum", [ones, axis], "unpad_rank")
            one = self.constant("unpad_one", np.array(1, np.int64))
            before = self._node("Sub", [rank, one], "unpad_rank_from_0")
            tokens = self._node("Shape", [self.index], "unpad_tokens")  # [1]: the zero row's index
            self.rows = self._node("Where", [real, before, tokens], "unpad_rows")
        return self.rows

    def sequences(self) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
        """(how many sequences: a scalar, where each one's rows start and end among the packed
        rows: [batch] each, whether there is exactly one: a scalar bool), made once. The packed
        rows hold the real tokens in row-major order, so each sequence's rows are contiguous."""
        if self.sequence_bounds is None:
            dtype = self.mask.dtype or ir.DataType.INT64
            zero = self.constant(f"unpad_mask_zero_{dtype.name}", np.zeros((), dtype.numpy()))
            padding = self._node("Equal", [self.mask, zero], "unpad_sequence_padding")
            real = self._node("Not", [padding], "unpad_sequence_real")
            ones = self._node("Cast", [real], "unpad_sequence_real_count", {"to": ir.DataType.INT64})
            last_axis = self.constant("unpad_axes_1", np.array([1], np.int64))
            lengths = self._node("ReduceSum", [ones, last_axis], "unpad_sequence_lengths", {"keepdims": 0})
            axis = self.constant("unpad_axis_0", np.array(0, np.int64))
            ends = self._node("CumSum", [lengths, axis], "unpad_sequence_ends")
            starts = self._node("Sub", [ends, lengths], "unpad_sequence_starts")
            shape = self._node("Shape", [lengths], "unpad_sequence_count_1d")
            count = self._node("Squeeze", [shape], "unpad_sequence_count")
            one = self.constant("unpad_one", np.array(1, np.int64))
            single = self._node("Equal", [count, one], "unpad_single_sequence")
            self.sequence_bounds = (count, starts, ends, single)
        return self.sequence_bounds

    def _zero_row(self, channels: int, dtype: ir.DataType) -> ir.Value:
        key = (channels, dtype)
        if key not in self.zero_rows:
            self.zero_rows[key] = self.constant(f"unpad_zero_row_{channels}_{dtype.name}", np.zeros((1, channels), dtype.numpy()))
        return self.zero_rows[key]

    def pack(self, value: ir.Value) -> ir.Value:
        """``value`` [batch, sequence, C] -> [tokens, C], right after its producer; once per value."""
        if id(value) in self.packed:
            return self.packed[id(value)]
        channels = value.shape[2]  # type: ignore[index]
        rows = ir.Value(name=f"{value.name}_rows", type=ir.TensorType(value.dtype) if value.dtype else None)
        width = self.constant(f"unpad_rows_{channels}", np.array([-1, channels], np.int64))
        reshape = ir.node("Reshape", [value, width], name=f"{value.name}_rows", outputs=[rows])
        gather = ir.node("Gather", [rows, self.index], attributes={"axis": 0}, name=f"{value.name}_pack")
        packed = gather.outputs[0]
        packed.name = f"{value.name}_packed"
        packed.dtype = value.dtype
        packed.shape = ir.Shape([ir.SymbolicDim("tokens"), channels])
        producer = value.producer()
        if producer is None:  # a graph input: the index nodes come first, then this
            self.nodes.extend([reshape, gather])
        else:
            self.graph.insert_after(producer, [reshape, gather])
        self.packed[id(value)] = packed
        return packed

    def unpack(self, packed: ir.Value, channels: int, batch, sequence) -> ir.Value:  # noqa: ANN001
        """``packed`` [tokens, C] -> [batch, sequence, C] with zeros at padded positions, right
        after the producer of ``packed``. (A batch without padding needs no more than a Reshape;
        choosing it with an If was measured no faster: the If costs what the copy saves.)"""
        dtype = packed.dtype or ir.DataType.FLOAT
        extended = ir.node("Concat", [packed, self._zero_row(channels, dtype)], attributes={"axis": 0}, name=f"{packed.name}_and_zero_row")
        gather = ir.node("Gather", [extended.outputs[0], self._rows()], attributes={"axis": 0}, name=f"{packed.name}_unpack")
        reshape = ir.node("Reshape", [gather.outputs[0], self._padded_shape(channels)], name=f"{packed.name}_padded")
        padded = reshape.outputs[0]
        padded.name = f"{packed.name}_padded"
        padded.dtype = dtype
        padded.shape = ir.Shape([batch, sequence, channels])
        self.graph.insert_after(packed.producer(), [extended, gather, reshape])  # type: ignore[arg-type]
        self.unpacks.append(gather)
        self.unpacked[id(padded)] = packed
        return padded

    def _padded_shape(self, channels: int) -> ir.Value:
        """[batch, sequence, channels], computed once per channel count."""
        if channels not in self.padded_shapes:
            if self.batch_sequence is None:
                self.batch_sequence = self._node("Shape", [self.mask], "unpad_batch_sequence")
            shape = self.batch_sequence
            width = self.constant(f"unpad_width_{channels}", np.array([channels], np.int64))
            self.padded_shapes[channels] = self._node("Concat", [shape, width], f"unpad_padded_shape_{channels}", {"axis": 0})
        return self.padded_shapes[channels]

    def finish(self, first: ir.Node) -> None:
        """The index computation goes to the top of the graph, before anything reads it."""
        top = next(iter(self.graph))
        self.graph.insert_before(top, self.nodes)
