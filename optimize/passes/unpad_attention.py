"""The unpad pass's attention: Q/K/V projection on real tokens only, softmax on the fast path.

After the unpad pass, everything token-wise runs packed ``[tokens, C]``, but the fused
``Attention`` (``QAttention`` in int8) still takes the padded ``[batch, sequence, C]`` layout,
so its Q/K/V projection, a third of a layer's GEMM work, runs on every padded position. And
given a key-padding mask, ONNX Runtime's CPU ``MultiHeadAttention`` leaves its flash-attention
kernel (MLAS) for a plain one; with no mask the flash kernel is about 3x faster at batch 32
(measured: 4.6 ms against 14.5 ms for the softmax part of one layer, batch 32, sequence 128).

The unpad pass therefore rewrites each such attention as

    q = unpack(MatMul(packed, Wq') + bq')  on real tokens (MatMulIntegerToFloat in int8),
    k, v likewise                          zeros at padded positions
    out = MultiHeadAttention(q, k, v)      no mask: the flash kernel; then each head divided
                                           by its weight on real keys (below)

(Three projections, not one of [H, 3H] and a Split: the Split copied every value once more.
Side by side at batch 8 and 32 of real sentences the three were 3-8% faster, fp32 and int8.)

The rewrite carries the key-padding mask in the projections themselves: Q, K and V get one extra
channel per head. Q's is 1 and K's KEY_MARK / scale on every real token, so every real key's
logit is lifted by KEY_MARK; a padded key's projection is all zeros (the unpack fills them), so
its logit is 0. That alone is not enough: softmax ignores a shift of a whole row, so nothing holds
the real logits' level near zero (a key bias adds q . b_k to every logit of a row), and a row
whose real logits all sit near -40 would give the padded keys as much weight as the real ones.
So V's extra channel is 1 on real tokens: the attention returns, per head, the softmax weight
that fell on real keys, and the output is divided by it, on the packed rows. That is exact at
any level (checked down to logits of -72; tests/unit/test_unpad_attention.py) as long as the
real keys' weight does not underflow (real logits above about -120); KEY_MARK keeps the division
near 1 in the usual case. Padded queries compute garbage, which the pack drops, as it dropped
the fused op's.

Only an attention whose input the unpad pass has just unpacked is rewritten, with the unpad
pass's own unpack for the projection: there, and only there, padded positions are zeros.
Any other attention (a past state, an attention bias, a mask that is not the key-padding mask,
half precision, which ONNX Runtime's CPU MultiHeadAttention lacks) is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from optimize.passes.base import constant_array

#: how far above a padded key every real key's logit is lifted. Large enough that in the usual
#: row a padded key's weight is nothing (exp(-40) = 4e-18; the division by the real keys' weight
#: covers the rest), small enough that (1) a logit of about 40 keeps float32 resolution (4e-6)
#: and (2) exp() of a padded key's logit minus the row maximum stays above -87, where float32
#: turns denormal: measured, a gap of 88 made the flash kernel 25x slower (130 ms against 5.5 ms)
#: and 177 still 2.4x, with or without ORT's set_denormal_as_zero.
KEY_MARK = 40.0

_MS = "com.microsoft"
_ATTENTION_ATTRIBUTES = {"num_heads", "qkv_hidden_sizes", "scale", "mask_filter_value", "unidirectional"}


def _widen_heads(matrix: np.ndarray, heads: int, fill_q: float, fill_k: float, fill_v: float) -> np.ndarray:
    """[..., 3 * H] (Q, K, V) -> [..., 3 * heads * (d + 1)]: one extra channel after each head."""
    hidden = matrix.shape[-1] // 3
    size = hidden // heads
    lead = matrix.shape[:-1]
    parts = []
    for i, fill in enumerate((fill_q, fill_k, fill_v)):
        block = matrix[..., i * hidden : (i + 1) * hidden].reshape(*lead, heads, size)
        extra = np.broadcast_to(np.asarray(fill, matrix.dtype), (*lead, heads, 1))
        parts.append(np.concatenate([block, extra], axis=-1).reshape(*lead, heads * (size + 1)))
    return np.concatenate(parts, axis=-1)


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

    # the extra channels through the bias: Q's is 1, K's KEY_MARK / scale, on real tokens only
    wide_bias = _widen_heads(bias, heads, 1.0, KEY_MARK / scale, 1.0)
    wide_weight = _widen_heads(weight, heads, 0, 0, 0)
    wide = heads * (size + 1)
    spans = {"q": (0, wide), "k": (wide, 2 * wide), "v": (2 * wide, 3 * wide)}
    if int8:
        scale_columns = _widen_heads(np.broadcast_to(weight_scale.astype(np.float32).reshape(-1), (columns,)), heads, 1.0, 1.0, 1.0)
        zero_columns = _widen_heads(np.broadcast_to(weight_zero.reshape(-1), (columns,)), heads, 0, 0, 0)
    batch, sequence = inputs[0].shape[0], inputs[0].shape[1]  # type: ignore[union-attr]  # unpacked: [batch, sequence, C]
    padded: list[ir.Value] = []
    for part, (start, stop) in spans.items():
        if int8:
            projection = ir.node("MatMulIntegerToFloat", [
                packed,  # the quantized activation, packed
                initializer(f"{part}_weight_packed", wide_weight[:, start:stop]),
                inputs[3],  # the activation's scale and zero point, as QAttention had them
                initializer(f"{part}_weight_scale_packed", scale_columns[start:stop]),
                inputs[6] if len(inputs) > 6 else None,
                initializer(f"{part}_weight_zero_point_packed", zero_columns[start:stop]),
                initializer(f"{part}_bias_packed", wide_bias[start:stop]),
            ], domain=_MS, name=f"{name}_{part}_packed")
            new_nodes = [projection]
        else:
            matmul = ir.node("MatMul", [packed, initializer(f"{part}_weight_packed", wide_weight[:, start:stop])], name=f"{name}_{part}_packed_matmul")
            projection = ir.node("Add", [matmul.outputs[0], initializer(f"{part}_bias_packed", wide_bias[start:stop])], name=f"{name}_{part}_packed")
            new_nodes = [matmul, projection]
        projected = projection.outputs[0]
        projected.name = f"{name}_{part}_packed"
        projected.dtype = ir.DataType.FLOAT
        projected.shape = ir.Shape([ir.SymbolicDim("tokens"), stop - start])
        graph.insert_before(node, new_nodes)
        padded.append(packing.unpack(projected, stop - start, batch, sequence))
    attention = ir.node("MultiHeadAttention", padded, domain=_MS, name=f"{name}_mha", attributes={"num_heads": heads, "scale": float(scale)})
    # V's extra channel (1 on real tokens) comes out as each head's softmax weight on real keys:
    # dividing by it undoes whatever weight the padded keys got, whatever the logits' level. Done
    # on the packed rows where the unpad pass packs the output (the usual case), else padded.
    raw = attention.outputs[0]
    raw.name, raw.dtype = f"{name}_mha", ir.DataType.FLOAT
    graph.insert_before(node, [attention])
    old = node.outputs[0]
    twin = packing.packed.pop(id(old), None)  # the unpad pass's pack of the output: Reshape, then Gather
    if twin is not None:
        gather = twin.producer()
        reshape = gather.inputs[0].producer()
        reshape.replace_input_with(0, raw)
        reshape.replace_input_with(1, initializer("rows_wide", np.array([-1, wide], np.int64)))
        twin.shape = ir.Shape([ir.SymbolicDim("tokens"), wide])
        readers = list(twin.uses())
        steps, result = _renormalized(twin, heads, size, f"{name}_rows", initializer, rows_layout=True)
        graph.insert_after(gather, steps)
        for reader, i in readers:
            reader.replace_input_with(i, result)
    if old.uses():
        steps, result = _renormalized(raw, heads, size, name, initializer, rows_layout=False)
        graph.insert_after(attention, steps)
        result.shape = old.shape
        old.replace_all_uses_with(result)
        graph.remove(node, safe=True)
        result.name = old.name
    else:
        graph.remove(node, safe=True)
    return None


def _renormalized(value: ir.Value, heads: int, size: int, name: str, initializer: Callable, rows_layout: bool) -> tuple[list[ir.Node], ir.Value]:
    """Each head's (d + 1) channels -> its d values divided by the last one: the nodes, the result."""
    lead = [-1] if rows_layout else [0, 0]
    by_head = ir.node("Reshape", [value, initializer(f"{name}_by_head", np.array([*lead, heads, size + 1], np.int64))], name=f"{name}_by_head")
    parts = ir.node("Split", [by_head.outputs[0], initializer(f"{name}_value_and_weight", np.array([size, 1], np.int64))],
                    attributes={"axis": len(lead) + 1}, num_outputs=2, name=f"{name}_value_and_weight")
    divide = ir.node("Div", list(parts.outputs), name=f"{name}_renormalized")
    merge = ir.node("Reshape", [divide.outputs[0], initializer(f"{name}_merged", np.array([*lead, heads * size], np.int64))], name=f"{name}_merged")
    steps = [by_head, parts, divide, merge]
    for step in steps:
        for i, out in enumerate(step.outputs):
            out.name = f"{step.name}_{i}"
            out.dtype = ir.DataType.FLOAT
    if rows_layout:
        merge.outputs[0].shape = ir.Shape([ir.SymbolicDim("tokens"), heads * size])
    return steps, merge.outputs[0]
