"""Which nodes of an encoder graph are int8 candidates, and what role each plays.

A candidate is a linear layer with a constant 2-D weight: ORT's fused ``Attention`` (the
packed Q/K/V projection) or a ``MatMul``. Its kind (qkv, attn_out, ffn_in, ffn_out) and
layer index are for people reading the sensitivity table; decisions use measurements only.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
import onnx_ir.passes.common as common

_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "Erf"}


@dataclass(frozen=True)
class LinearTarget:
    node: str
    op: str  # "Attention" | "MatMul"
    kind: str
    layer: int
    activation: str
    weight: str
    in_features: int
    out_features: int

    @property
    def macs_per_token(self) -> int:
        return self.in_features * self.out_features

    @property
    def label(self) -> str:
        return f"L{self.layer}.{self.kind}"


def _const_2d(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and len(value.const_value.shape) == 2


def _producer_op(value: ir.Value) -> str:
    producer = value.producer()
    return producer.op_type if producer is not None else ""


def _consumer_ops(value: ir.Value) -> set[str]:
    ops = set()
    for node, _ in value.uses():
        ops.add(node.op_type)
        if node.op_type == "Add":  # MatMul -> Add(bias) -> Gelu
            ops |= {n.op_type for n, _ in node.outputs[0].uses()}
    return ops


def _kind(node: ir.Node) -> str:
    if node.op_type == "Attention":
        return "qkv"
    activation, output = node.inputs[0], node.outputs[0]
    producer = _producer_op(activation)
    if producer in ("Attention", "MultiHeadAttention", "QAttention"):
        return "attn_out"
    if producer in _GELU_OPS or producer == "Mul" and _producer_op(activation.producer().inputs[0]) in _GELU_OPS | {"Add"}:
        return "ffn_out"
    if _consumer_ops(output) & _GELU_OPS:
        return "ffn_in"
    siblings = sum(1 for n, _ in activation.uses() if n.op_type == "MatMul" and _const_2d(n.inputs[1]))
    if siblings >= 3:
        return "qkv_part"
    return "linear"


def find_targets(model: ir.Model) -> list[LinearTarget]:
    """Linear layers in graph order; node names made unique first so they can be referred to."""
    common.NameFixPass()(model)
    targets: list[LinearTarget] = []
    layer = 0
    seen_ffn_out = False
    for node in model.graph:
        is_attention = node.domain == "com.microsoft" and node.op_type == "Attention"
        is_matmul = node.domain in ("", "ai.onnx") and node.op_type == "MatMul"
        if not (is_attention or is_matmul) or not _const_2d(node.inputs[1]):
            continue
        kind = _kind(node)
        if kind in ("qkv", "qkv_part") and seen_ffn_out:
            layer, seen_ffn_out = layer + 1, False
        seen_ffn_out = seen_ffn_out or kind == "ffn_out"
        weight = node.inputs[1]
        rows, cols = weight.const_value.shape
        targets.append(
            LinearTarget(node.name, node.op_type, kind, layer, node.inputs[0].name, weight.name, int(rows), int(cols))
        )
    return targets
