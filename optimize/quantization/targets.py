"""Which nodes of an encoder graph are int8 candidates, and what role each plays.

A candidate is a linear layer with a constant 2-D weight: ORT's fused ``Attention`` (the
packed Q/K/V projection) or a ``MatMul``. Its kind (qkv, attn_out, ffn_in, ffn_out) and
layer index are for people reading the sensitivity table; decisions use measurements only.
"""

from __future__ import annotations

import dataclasses
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
    #: further nodes reading the same activation with their own weights, decided together
    #: (the Q, K and V projections of an unfused graph: TensorRT wants one Q/DQ for all three).
    group: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.node, *self.group)

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


_NEXT_KIND = {"qkv": "attn_out", "qkv_part": "attn_out", "attn_out": "ffn_in", "ffn_in": "ffn_out"}


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
        if kind == "linear" and targets:
            # unfused graphs hide the roles behind Reshape/Transpose and Div/Erf chains; in an
            # encoder layer the linear layers come in order qkv, attn_out, ffn_in, ffn_out
            kind = _NEXT_KIND.get(targets[-1].kind, "linear")
        if kind in ("qkv", "qkv_part") and seen_ffn_out:
            layer, seen_ffn_out = layer + 1, False
        seen_ffn_out = seen_ffn_out or kind == "ffn_out"
        weight = node.inputs[1]
        rows, cols = weight.const_value.shape
        targets.append(
            LinearTarget(node.name, node.op_type, kind, layer, node.inputs[0].name, weight.name, int(rows), int(cols))
        )
    return _group_projections(targets)


def _group_projections(targets: list[LinearTarget]) -> list[LinearTarget]:
    """Merge the qkv_part MatMuls that share an activation into one target."""
    grouped: list[LinearTarget] = []
    by_activation: dict[str, int] = {}
    for target in targets:
        if target.kind != "qkv_part":
            grouped.append(target)
            continue
        if target.activation not in by_activation:
            by_activation[target.activation] = len(grouped)
            grouped.append(dataclasses.replace(target, kind="qkv"))
            continue
        index = by_activation[target.activation]
        first = grouped[index]
        grouped[index] = dataclasses.replace(
            first, group=(*first.group, target.node), out_features=first.out_features + target.out_features
        )
    return grouped


@dataclass(frozen=True)
class ActivationSite:
    """Where TensorRT wants Q/DQ on activations beyond the linear layers' inputs (TensorRT
    #3243): both inputs of the attention batched MatMuls, and the skip branch of each residual
    Add, so the Add fuses into the preceding GEMM's int8 epilogue."""

    node: str
    kind: str  # qk_bmm | pv_bmm | residual
    layer: int
    inputs: tuple[int, ...]  # which inputs of the node get Q/DQ
    activations: tuple[str, ...]
    macs_per_token: int = 1

    @property
    def label(self) -> str:
        return f"L{self.layer}.{self.kind}"


def find_trt_sites(model: ir.Model) -> list[ActivationSite]:
    """Attention batched MatMuls and residual Adds of a standard-op (unfused) encoder graph."""
    common.NameFixPass()(model)
    sites: list[ActivationSite] = []
    layer, bmm_in_layer = 0, 0
    for node in model.graph:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            left, right = node.inputs[0], node.inputs[1]
            if left is None or right is None or left.const_value is not None or right.const_value is not None:
                continue
            kind = "qk_bmm" if bmm_in_layer % 2 == 0 else "pv_bmm"
            sites.append(ActivationSite(node.name, kind, layer, (0, 1), (left.name, right.name)))
            bmm_in_layer += 1
        elif node.op_type == "Add" and any(n.op_type == "LayerNormalization" for n, _ in node.outputs[0].uses()):
            skip = [i for i, v in enumerate(node.inputs) if v is not None and _producer_op(v) == "LayerNormalization"]
            if len(skip) == 1 and all(v is not None and v.const_value is None for v in node.inputs):
                index = skip[0]
                sites.append(ActivationSite(node.name, "residual", layer, (index,), (node.inputs[index].name,)))
                if bmm_in_layer >= 2 and _residual_count(sites, layer) == 2:
                    layer, bmm_in_layer = layer + 1, 0
    return sites


def _residual_count(sites: list[ActivationSite], layer: int) -> int:
    return sum(1 for s in sites if s.layer == layer and s.kind == "residual")
