"""Writing int8 decisions into the graph, in one of two forms.

``ort``: what ONNX Runtime's CPU kernels run fastest: QuantizeLinear (uint8) feeding
MatMulIntegerToFloat (bias folded in) and QAttention, weights int8 per output channel.
``qdq``: standard ONNX QuantizeLinear/DequantizeLinear pairs around MatMul, weights stored
int8 behind a per-channel DequantizeLinear: portable, and what TensorRT wants (with
symmetric int8 activations, zero point 0).

Two outlier techniques, both exact in real arithmetic:
- migration (SmoothQuant): the activation is divided per channel by ``s`` (an explicit Mul,
  cheap in ORT and TensorRT; ORT's per-axis QuantizeLinear is 75x slower than per-tensor on
  CPU, measured) and the weight's rows are multiplied by ``s``;
- decomposition (after LLM.int8()): the few outlier channels are zeroed before quantization
  and their contribution ``x[..., O] @ W[O, :]`` is computed in fp32 beside the int8 product
  (a Gather of |O| channels and a [tokens, |O|] x [|O|, N] MatMul), so one channel of 25
  no longer sets the quantization step of 1,535 channels of 1.5.

Under symmetric int8 (``qdq`` for TensorRT) a linear layer's input may also be centred: a
constant Add before the QuantizeLinear, taken back in the layer's bias (ranges.centred_params).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimize.calibration.ranges import QuantParams, quantize_weight
from optimize.passes.base import adopt
from optimize.quantization.targets import ActivationSite, LinearTarget

STYLES = ("ort", "qdq")


@dataclass(frozen=True)
class Decision:
    target: LinearTarget
    params: QuantParams
    smooth: np.ndarray | None = None  # per input channel; None: no migration
    outliers: np.ndarray | None = None  # input channel indices computed in fp32; None: none
    shift: float = 0.0  # added to the (transformed) input before quantization, taken back in the bias

    def input_transform(self) -> np.ndarray | None:
        """What the activation is multiplied by before quantization (None: nothing)."""
        if self.smooth is None and self.outliers is None:
            return None
        factor = (1.0 / self.smooth) if self.smooth is not None else np.ones(self.target.in_features)
        factor = factor.astype(np.float32)
        if self.outliers is not None:
            factor[self.outliers] = 0.0
        return factor

    def graph_transform(self) -> np.ndarray | None:
        """The Mul the graph needs before quantization: the smoothing factors only. Outlier
        channels need no zeroing there: their weight rows are zero in the int8 product, so
        whatever their quantized values (clamped) they add nothing; the Mul would cost a pass
        over the activation for no change in any output."""
        if self.smooth is None:
            return None
        return self.input_transform()


@dataclass(frozen=True)
class SiteDecision:
    """Q/DQ on some inputs of a node that is not a linear layer (TensorRT fusion sites)."""

    target: ActivationSite
    params: tuple[QuantParams, ...]  # one per entry of target.inputs


class _Emitter:
    def __init__(self, model: ir.Model, style: str) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown emission style {style!r}")
        self.model, self.graph, self.style = model, model.graph, style
        self.nodes = {n.name: n for n in self.graph}
        self.node_names = set(self.nodes)
        self.quantized_inputs: dict[tuple[str, float, int, bytes], ir.Value] = {}
        self.dequantized: dict[str, ir.Value] = {}  # quantized value name -> its one DequantizeLinear

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        base, index = name, 1
        while name in self.graph.initializers:
            name, index = f"{base}_{index}", index + 1
        # np.ascontiguousarray would turn a 0-d scale into shape [1]: per-axis, not per-tensor
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def add(self, op: str, inputs: list, before: ir.Node, *, domain: str = "", attributes: dict | None = None, name: str = "", outputs: int = 1) -> ir.Node:
        node = ir.node(op, inputs, attributes=attributes or {}, domain=domain, name=self.unique(name or op.lower()), num_outputs=outputs)
        self.graph.insert_before(before, node)
        return node

    def unique(self, base: str) -> str:
        name, index = base, 1
        while name in self.node_names:
            name, index = f"{base}_{index}", index + 1
        self.node_names.add(name)
        return name

    def quantized_activation(self, decision: Decision, node: ir.Node, index: int = 0) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(quantized input, scale, zero point), shared by nodes that read the same tensor the same way."""
        params, x = decision.params, node.inputs[index]
        ort_style = self.style == "ort"
        zero_point = params.zero_point + 128 if (ort_style and params.symmetric) else params.zero_point
        dtype = np.uint8 if (ort_style or not params.symmetric) else np.int8
        linear = isinstance(decision.target, LinearTarget)
        transform = decision.graph_transform() if linear else None
        shift = decision.shift if linear else 0.0
        key = (x.name, float(params.scale), int(zero_point), transform.tobytes() if transform is not None else b"", shift)
        if key in self.quantized_inputs:
            cached = self.quantized_inputs[key]
            return cached, *self._scale_zp_of(cached)
        prefix = f"{decision.target.node}_{index}" if index else decision.target.node
        if transform is not None:
            factor = self.const(f"{prefix}_x_transform", transform)
            x = self.add("Mul", [x, factor], node, name=f"{prefix}_x_transform").outputs[0]
        if shift:
            offset = self.const(f"{prefix}_x_shift", np.array(shift, np.float32))
            x = self.add("Add", [x, offset], node, name=f"{prefix}_x_shift").outputs[0]
        scale = self.const(f"{prefix}_x_scale", np.array(params.scale, np.float32))
        zp = self.const(f"{prefix}_x_zero_point", np.array(zero_point, dtype))
        quantized = self.add("QuantizeLinear", [x, scale, zp], node, name=f"{prefix}_x_quantize").outputs[0]
        self.quantized_inputs[key] = quantized
        return quantized, scale, zp

    @staticmethod
    def _scale_zp_of(quantized: ir.Value) -> tuple[ir.Value, ir.Value]:
        producer = quantized.producer()
        assert producer is not None
        return producer.inputs[1], producer.inputs[2]  # type: ignore[return-value]

    def weight(self, decision: Decision, node: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value]:
        array = node.inputs[1].const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
        prefix = node.name
        if decision.smooth is not None:
            array = array * decision.smooth.reshape(-1, 1).astype(np.float32)
        if decision.outliers is not None:
            array = array.copy()
            array[decision.outliers, :] = 0.0  # those rows run in fp32 beside the int8 product
        quantized, scales = quantize_weight(array, axis=1)
        return (
            self.const(f"{prefix}_w_int8", quantized),
            self.const(f"{prefix}_w_scale", scales),
            self.const(f"{prefix}_w_zero_point", np.zeros(scales.shape, np.int8)),
        )

    @staticmethod
    def _foldable_bias(node: ir.Node, width: int) -> ir.Node | None:
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0][0].op_type != "Add":
            return None
        add = uses[0][0]
        other = add.inputs[1 - uses[0][1]]
        if other is None or other.const_value is None or tuple(other.const_value.shape) != (width,):
            return None
        return add

    def replace(self, old: ir.Node, new: ir.Node, last: ir.Node | None = None) -> None:
        """``new`` takes over what ``last`` (default ``old``) produced; the replaced nodes go."""
        last = last or old
        value = last.outputs[0]
        value.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
        for dead in ([last, old] if last is not old else [old]):
            self.graph.remove(dead, safe=True)  # safe: also drops its input uses, so dead weights show as unused
        adopt(new.outputs[0], value)

    def dequantize(self, quantized: ir.Value, scale: ir.Value, zp: ir.Value, before: ir.Node) -> ir.Value:
        """One DequantizeLinear per quantized tensor, shared by every reader (TensorRT fuses it so)."""
        if quantized.name not in self.dequantized:
            node = self.add("DequantizeLinear", [quantized, scale, zp], before, name=f"{quantized.name}_dequantize")
            self.dequantized[quantized.name] = node.outputs[0]
        return self.dequantized[quantized.name]

    def emit(self, decision: Decision | SiteDecision) -> None:
        if isinstance(decision, Decision):
            for name in decision.target.nodes:  # a group shares one quantized activation
                self._emit_linear(decision, self.nodes[name])
            return
        node = self.nodes[decision.target.node]
        if isinstance(decision, SiteDecision):
            for index, params in zip(decision.target.inputs, decision.params):
                proxy = Decision(decision.target, params)  # type: ignore[arg-type]
                x_q, x_scale, x_zp = self.quantized_activation(proxy, node, index)
                node.replace_input_with(index, self.dequantize(x_q, x_scale, x_zp, node))

    def _emit_linear(self, decision: Decision, node: ir.Node) -> None:
        if self.style == "ort":
            self._emit_ort(decision, node)
        else:
            self._emit_qdq(decision, node)

    def _emit_ort(self, decision: Decision, node: ir.Node) -> None:
        if decision.shift:  # uint8 with a zero point covers a one-sided range by itself
            raise ValueError(f"{node.name}: a centring shift belongs to symmetric Q/DQ, not to ONNX Runtime's uint8 form")
        x_q, x_scale, x_zp = self.quantized_activation(decision, node)
        w_q, w_scale, w_zp = self.weight(decision, node)
        prefix = node.name
        if node.op_type == "Attention":
            inputs = list(node.inputs) + [None] * 6
            attributes = {k: v for k, v in node.attributes.items() if k != "qkv_hidden_sizes"}
            new = self.add(
                "QAttention",
                [x_q, w_q, inputs[2], x_scale, w_scale, inputs[3], x_zp, w_zp],
                node, domain="com.microsoft", attributes=attributes, name=f"{prefix}_int8",
            )
            self.replace(node, new)
            return
        bias_add = self._foldable_bias(node, decision.target.out_features)
        inputs = [x_q, w_q, x_scale, w_scale, x_zp, w_zp]
        if bias_add is not None:
            inputs.append(next(v for v in bias_add.inputs if v is not None and v.const_value is not None))
        new = self.add("MatMulIntegerToFloat", inputs, node, domain="com.microsoft", name=f"{prefix}_int8")
        if decision.outliers is not None:
            new = self.add("Add", [new.outputs[0], self.outlier_product(decision, node)], node, name=f"{prefix}_with_outliers")
        self.replace(node, new, bias_add)

    def outlier_product(self, decision: Decision, node: ir.Node) -> ir.Value:
        """x[..., O] @ W[O, :] in fp32, from the unquantized activation and original weight rows."""
        assert decision.outliers is not None
        prefix = node.name
        weight = node.inputs[1].const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
        indices = self.const(f"{prefix}_outlier_channels", decision.outliers.astype(np.int64))
        rows = self.const(f"{prefix}_outlier_weight", np.ascontiguousarray(weight[decision.outliers, :]))
        picked = self.add("Gather", [node.inputs[0], indices], node, attributes={"axis": -1}, name=f"{prefix}_outlier_gather")
        return self.add("MatMul", [picked.outputs[0], rows], node, name=f"{prefix}_outlier_matmul").outputs[0]

    def _emit_qdq(self, decision: Decision, node: ir.Node) -> None:
        x_q, x_scale, x_zp = self.quantized_activation(decision, node)
        w_q, w_scale, w_zp = self.weight(decision, node)
        prefix = node.name
        x_dq = self.dequantize(x_q, x_scale, x_zp, node)
        w_dq = self.add(
            "DequantizeLinear", [w_q, w_scale, w_zp], node, attributes={"axis": 1}, name=f"{prefix}_w_dequantize"
        ).outputs[0]
        outliers = self.outlier_product(decision, node) if decision.outliers is not None else None
        node.replace_input_with(0, x_dq)
        node.replace_input_with(1, w_dq)
        if decision.shift:
            self.take_back_shift(decision, node, w_q, w_scale)
        if outliers is not None:
            self.add_after(node, outliers, f"{prefix}_with_outliers", "_int8")

    def add_after(self, node: ir.Node, addend: ir.Value, name: str, suffix: str) -> None:
        """``node``'s output plus ``addend`` in its place: every reader (and the graph output it
        may be) reads the sum under the output's name; the output itself gets ``suffix``."""
        result = node.outputs[0]
        total = ir.node("Add", [result, addend], name=self.unique(name))
        self.graph.insert_after(node, total)
        result.replace_all_uses_with(total.outputs[0], replace_graph_outputs=True)
        total.replace_input_with(0, result)  # the line above redirected the Add's own input too
        original = result.name
        result.name = f"{original}{suffix}"
        adopt(total.outputs[0], result)
        total.outputs[0].name = original

    def take_back_shift(self, decision: Decision, node: ir.Node, w_q: ir.Value, w_scale: ir.Value) -> None:
        """The product now reads x + c: subtract c times the column sums of the int8 weight it
        multiplies (dequantized, so the correction is exact for the weight used), from the
        layer's bias where it has one, else by an Add of its own."""
        weight = w_q.const_value.numpy().astype(np.float32) * w_scale.const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
        correction = (-decision.shift * weight.sum(axis=0)).astype(np.float32)
        bias_add = self._foldable_bias(node, weight.shape[1])  # this node's width: Q, K and V share one target
        if bias_add is not None:
            index = next(i for i, v in enumerate(bias_add.inputs) if v is not None and v.const_value is not None)
            bias = bias_add.inputs[index].const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
            bias_add.replace_input_with(index, self.const(f"{node.name}_bias_shifted", bias + correction))
            return
        self.add_after(node, self.const(f"{node.name}_shift_correction", correction), f"{node.name}_shift_correction", "_shifted")


def emit(model: ir.Model, decisions: list[Decision | SiteDecision], style: str) -> None:
    """Rewrite every decided linear layer; the fp32 weights they replace become dead."""
    emitter = _Emitter(model, style)
    for decision in decisions:
        emitter.emit(decision)
    if style == "ort":
        model.opset_imports.setdefault("com.microsoft", 1)
    for value in list(model.graph.initializers.values()):
        if not value.uses() and value not in model.graph.outputs:
            del model.graph.initializers[value.name]
