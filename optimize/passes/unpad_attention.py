"""The unpad pass's attention: Q/K/V projection and attention on real tokens only.

After the unpad pass, everything token-wise runs packed ``[tokens, C]``, but the fused
``Attention`` (``QAttention`` in int8) still takes the padded ``[batch, sequence, C]`` layout,
so its Q/K/V projection, a third of a layer's GEMM work, runs on every padded position, and its
softmax on every padded query and key. ONNX Runtime has no packed (variable-length) attention on
the CPU (``PackedAttention`` and ``PackedMultiHeadAttention`` are CUDA only in ORT 1.32).

The unpad pass therefore rewrites each such attention as

    q = MatMul(packed, Wq) + bq            on real tokens (MatMulIntegerToFloat in int8),
    k, v likewise                          the packed rows, sequence after sequence
    out = attention of each sequence on its own rows, packed

where each sequence's attention is ONNX Runtime's ``MultiHeadAttention`` on the slice of the
packed rows that holds it, without a mask: its flash-attention kernel (MLAS), which ORT takes
only with no mask and no bias (about 3x the masked kernel at batch 32, sequence 128). A sequence
attends over its real tokens only, which is what the key-padding mask asked for, exactly: no
padded query or key is computed at all, so the work is the sum of each sequence's length
squared, not the batch times the longest one's. The sequences are visited by a ``Loop``; a batch
of one takes an ``If`` branch that runs the attention on all the rows at once (they are that
sequence), without the Loop's per-iteration cost.

(Three projections, not one of [H, 3H] and a Split: the Split copied every value once more.
Side by side at batch 8 and 32 of real sentences the three were 3-8% faster, fp32 and int8. The
version before this one ran one padded ``MultiHeadAttention`` per layer and carried the mask in
an extra Q/K/V channel per head; benchmarks/NOTES.md has both side by side.)

Only an attention whose input the unpad pass has just unpacked is rewritten (its projection's
input is then the packed twin). Any other attention (a past state, an attention bias, a mask
that is not the key-padding mask, half precision, which ONNX Runtime's CPU MultiHeadAttention
lacks) is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from optimize.passes.base import constant_array

_MS = "com.microsoft"
_ATTENTION_ATTRIBUTES = {"num_heads", "qkv_hidden_sizes", "scale", "mask_filter_value", "unidirectional"}


def pack_attentions(graph: ir.Graph, mask: ir.Value, packing: Any, token_wise: Callable[[ir.Node], bool]) -> dict[str, Any]:
    """Rewrite every fused attention that reads an unpacked tensor of ``packing`` (unpad's
    ``_Packing``), directly or through token-wise nodes (``token_wise``: the unpad pass's test);
    how many were rewritten, and why the others were not."""
    rewritten, skipped = 0, []
    for index, node in enumerate(list(graph)):
        if node.domain != _MS or node.op_type not in ("Attention", "QAttention"):
            continue
        why = _rewrite(graph, node, mask, packing, token_wise, index)
        if why is None:
            rewritten += 1
        else:
            skipped.append(f"{node.name}: {why}")
    return {"packed": rewritten, **({"left": skipped} if skipped else {})}


def _packed_twin(
    value: ir.Value, packing: Any, token_wise: Callable[[ir.Node], bool], graph: ir.Graph, before: ir.Node, depth: int = 4
) -> ir.Value | None:
    """``value`` on the packed rows: its packed twin if the unpad pass unpacked it, else the
    token-wise nodes between it and one (an int8 attention's SmoothQuant Mul and QuantizeLinear,
    left padded because their one user was the attention) made again on the packed rows."""
    from optimize.passes.unpad import is_constant  # unpad imports this module

    if id(value) in packing.unpacked:
        return packing.unpacked[id(value)]
    producer = value.producer()
    if depth == 0 or producer is None or len(producer.outputs) != 1 or not token_wise(producer):
        return None
    twins: list[ir.Value | None] = []
    for source in producer.inputs:
        if source is None or is_constant(source):
            twins.append(source)
            continue
        twin = _packed_twin(source, packing, token_wise, graph, before, depth - 1)
        if twin is None:
            return None
        twins.append(twin)
    clone = ir.node(producer.op_type, twins, attributes=dict(producer.attributes), domain=producer.domain, name=f"{value.name}_packing")  # value names are unique; node names may be empty
    packed = clone.outputs[0]
    packed.name = f"{value.name}_packed"
    packed.dtype = value.dtype
    packed.shape = ir.Shape([ir.SymbolicDim("tokens"), value.shape[2] if value.shape is not None else None])
    graph.insert_before(before, [clone])
    packing.unpacked[id(value)] = packed  # a second reader of ``value`` reuses this clone
    return packed


def _is_padding_mask(value: ir.Value | None, mask: ir.Value) -> bool:
    """The 2-D 0/1 key-padding mask: the graph's mask input, maybe through Casts."""
    while value is not None:
        if value is mask:
            return True
        producer = value.producer()
        if producer is None or producer.op_type != "Cast":
            return False
        value = producer.inputs[0]
    return False


def _rewrite(
    graph: ir.Graph, node: ir.Node, mask: ir.Value, packing: Any, token_wise: Callable[[ir.Node], bool], index: int
) -> str | None:
    int8 = node.op_type == "QAttention"
    inputs = list(node.inputs)
    mask_at, expected = (5, 8) if int8 else (3, 4)
    if any(v is not None for v in inputs[expected:]):
        return "past state or attention bias"
    if node.outputs[0] in graph.outputs or any(v.uses() or v in graph.outputs for v in node.outputs[1:]):
        return "its output is a graph output, or its present state is used"
    if len(inputs) <= mask_at or not _is_padding_mask(inputs[mask_at], mask):
        return "no 2-D key-padding mask"
    unknown = set(node.attributes) - _ATTENTION_ATTRIBUTES
    if unknown or node.attributes.get_int("unidirectional", 0):
        return f"attributes {sorted(unknown) or ['unidirectional']}"
    weight, bias = constant_array(inputs[1]), constant_array(inputs[2])
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] % 3 or bias.shape != (weight.shape[1],):
        return "weights or bias not constant [H, 3H] and [3H]"
    if bias.dtype != np.float32 or (not int8 and weight.dtype != np.float32):
        return "not float32 (ONNX Runtime's CPU MultiHeadAttention is float32 only)"
    heads = node.attributes.get_int("num_heads", 0)
    hidden = weight.shape[1] // 3
    sizes = node.attributes.get_ints("qkv_hidden_sizes", None)
    if heads <= 0 or hidden % heads or (sizes is not None and list(sizes) != [hidden] * 3):
        return "unequal Q/K/V sizes"
    size = hidden // heads
    scale = node.attributes.get_float("scale", 0.0) or 1.0 / math.sqrt(size)
    if int8:
        columns = weight.shape[1]
        weight_scale = constant_array(inputs[4])
        weight_zero = constant_array(inputs[7]) if len(inputs) > 7 and inputs[7] is not None else np.zeros(1, weight.dtype)
        if weight_scale is None or weight_zero is None or weight_scale.size not in (1, columns) or weight_zero.size not in (1, columns):
            return "int8 weight scale or zero point not constant, per tensor or per column"
    # last, as it may add nodes: the input on the packed rows
    packed = _packed_twin(inputs[0], packing, token_wise, graph, node) if inputs[0] is not None else None
    if packed is None:
        return "its input is not unpacked from real tokens"
    name = f"{node.name or 'attention'}_{index}"  # the index: two unnamed attentions stay apart

    def initializer(suffix: str, array: np.ndarray) -> ir.Value:
        return packing.constant(f"{name}_{suffix}", np.ascontiguousarray(array))

    batch, sequence = inputs[0].shape[0], inputs[0].shape[1]  # type: ignore[union-attr]  # unpacked: [batch, sequence, C]
    rows: list[ir.Value] = []
    if int8:
        scales = np.broadcast_to(weight_scale.astype(np.float32).reshape(-1), (columns,))
        zeros = np.broadcast_to(weight_zero.reshape(-1), (columns,))
    for position, part in enumerate(("q", "k", "v")):
        span = slice(position * hidden, (position + 1) * hidden)  # QAttention's [H, 3H]: Q, then K, then V
        if int8:
            projection = ir.node("MatMulIntegerToFloat", [
                packed,  # the quantized activation, packed
                initializer(f"{part}_weight_packed", weight[:, span]),
                inputs[3],  # the activation's scale and zero point, as QAttention had them
                initializer(f"{part}_weight_scale_packed", scales[span]),
                inputs[6] if len(inputs) > 6 else None,
                initializer(f"{part}_weight_zero_point_packed", zeros[span]),
                initializer(f"{part}_bias_packed", bias[span]),
            ], domain=_MS, name=f"{name}_{part}_packed")
            new_nodes = [projection]
        else:
            matmul = ir.node("MatMul", [packed, initializer(f"{part}_weight_packed", weight[:, span])], name=f"{name}_{part}_packed_matmul")
            projection = ir.node("Add", [matmul.outputs[0], initializer(f"{part}_bias_packed", bias[span])], name=f"{name}_{part}_packed")
            new_nodes = [matmul, projection]
        projected = projection.outputs[0]
        projected.name = f"{name}_{part}_packed"
        projected.dtype = ir.DataType.FLOAT
        projected.shape = ir.Shape([ir.SymbolicDim("tokens"), hidden])
        graph.insert_before(node, new_nodes)
        rows.append(projected)
    attended = _per_sequence(graph, node, packing, rows, heads, float(scale), name)
    old = node.outputs[0]
    twin = packing.packed.pop(id(old), None)  # the unpad pass's pack of the output: Reshape, then Gather
    if twin is not None:
        twin.replace_all_uses_with(attended)
        gather = twin.producer()
        graph.remove([gather, gather.inputs[0].producer()], safe=True)
    if old.uses():  # a reader on the padded layout (the pack took the usual ones)
        padded = packing.unpack(attended, hidden, batch, sequence)
        padded.shape = old.shape
        old.replace_all_uses_with(padded)
    graph.remove(node, safe=True)
    return None


def _per_sequence(graph: ir.Graph, before: ir.Node, packing: Any, rows: list[ir.Value], heads: int, scale: float, name: str) -> ir.Value:
    """Attention of each sequence over its own rows of the packed Q, K and V ([tokens, H] each):
    an If whose one-sequence branch attends over all the rows at once and whose other branch
    loops over the sequences; the result is packed like its inputs."""
    count, starts, ends, single = packing.sequences()
    axis_0 = packing.constant("unpad_attention_axis_0", np.array([0], np.int64))
    attributes = {"num_heads": heads, "scale": scale}

    def attend(q: ir.Value, k: ir.Value, v: ir.Value, prefix: str) -> tuple[list[ir.Node], ir.Value]:
        """[L, H] each -> MultiHeadAttention over one sequence -> [L, H]."""
        batched = [ir.node("Unsqueeze", [x, axis_0], name=f"{prefix}_{part}_batch_of_one") for x, part in zip((q, k, v), "qkv")]
        mha = ir.node("MultiHeadAttention", [b.outputs[0] for b in batched], domain=_MS, attributes=attributes, name=f"{prefix}_mha")
        squeeze = ir.node("Squeeze", [mha.outputs[0], axis_0], name=f"{prefix}_rows")
        return [*batched, mha, squeeze], squeeze.outputs[0]

    # one sequence: its rows are all the rows
    one_nodes, one_out = attend(*rows, prefix=f"{name}_one")
    one = ir.Graph([], [one_out], nodes=one_nodes, name=f"{name}_one_sequence")

    # several: a Loop over them, each slicing its rows out, collected in a tensor sequence
    step = ir.Value(name=f"{name}_sequence_index", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    go_on = ir.Value(name=f"{name}_loop_condition", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    collected = ir.Value(name=f"{name}_collected", type=ir.SequenceType(ir.TensorType(ir.DataType.FLOAT)))
    at = ir.node("Unsqueeze", [step, axis_0], name=f"{name}_at")
    start = ir.node("Gather", [starts, at.outputs[0]], name=f"{name}_start")
    end = ir.node("Gather", [ends, at.outputs[0]], name=f"{name}_end")
    slices = [
        ir.node("Slice", [x, start.outputs[0], end.outputs[0], axis_0], name=f"{name}_{part}_of_sequence")
        for x, part in zip(rows, "qkv")
    ]
    each_nodes, each_out = attend(*(s.outputs[0] for s in slices), prefix=f"{name}_each")
    keep_going = ir.node("Identity", [go_on], name=f"{name}_keep_going")
    insert = ir.node("SequenceInsert", [collected, each_out], name=f"{name}_collect")
    body = ir.Graph(
        [step, go_on, collected], [keep_going.outputs[0], insert.outputs[0]],
        nodes=[at, start, end, *slices, *each_nodes, keep_going, insert], name=f"{name}_each_sequence",
    )
    empty = ir.node("SequenceEmpty", [], attributes={"dtype": ir.DataType.FLOAT}, name=f"{name}_none_yet")
    loop = ir.node("Loop", [count, None, empty.outputs[0]], attributes={"body": body}, name=f"{name}_over_sequences")
    concat = ir.node("ConcatFromSequence", [loop.outputs[0]], attributes={"axis": 0}, name=f"{name}_joined")
    several = ir.Graph([], [concat.outputs[0]], nodes=[empty, loop, concat], name=f"{name}_several_sequences")

    branch = ir.node("If", [single], attributes={"then_branch": one, "else_branch": several}, name=f"{name}_attention")
    result = branch.outputs[0]
    result.name = f"{name}_attended"
    result.dtype = ir.DataType.FLOAT
    result.shape = ir.Shape([ir.SymbolicDim("tokens"), rows[0].shape[1] if rows[0].shape is not None else None])
    for node in (*one_nodes, at, start, end, *slices, *each_nodes, keep_going, insert, empty, loop, concat):
        node.outputs[0].name = node.name  # unique across the graph and its branches, as ONNX Runtime wants
    # the types ONNX's checker wants of a subgraph's outputs (it infers no further into a Loop)
    tensor_sequence = ir.SequenceType(ir.TensorType(ir.DataType.FLOAT))
    for value in (insert.outputs[0], empty.outputs[0], loop.outputs[0]):
        value.type = tensor_sequence
    keep_going.outputs[0].type, keep_going.outputs[0].shape = ir.TensorType(ir.DataType.BOOL), ir.Shape([])
    for value in (one_out, each_out, concat.outputs[0]):
        value.dtype = ir.DataType.FLOAT
    graph.insert_before(before, [branch])
    return result
