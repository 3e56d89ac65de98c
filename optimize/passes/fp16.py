"""FP16 without NaN: fp16 weights and compute, fp32 exactly where fp16 would overflow.

Which nodes stay fp32 is measured, not guessed from a list alone: every float tensor of the
graph is watched on calibration text, and a node runs in fp32 if any float tensor it reads
or writes passes ``FP16_SAFE_MAX`` (fp16's 65504 with room for text calibration never saw).
Normalizations (LayerNormalization and friends) and accumulating reductions stay fp32 by
default: their sums of squares are where fp16 overflows first (TensorRT #2564).

The graph's inputs and outputs keep their types (int64 in, float32 out). Casts are inserted
only where precision changes along an edge, folded into constants where they cast one, and
merged where two meet (Cast(int->fp32) -> Cast(fp32->fp16) becomes Cast(int->fp16)); every
weight is stored once, in the precision of the nodes that read it.
"""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from optimize.calibration.source import CalibrationSource
from optimize.calibration.stats import collect
from optimize.config import SessionConfig
from optimize.passes.base import OptimizePass, adopt

FP16_MAX = 65504.0
#: calibration text is finite; real inputs can go further. Keep 4x headroom.
FP16_SAFE_MAX = FP16_MAX / 4

NORMALIZATIONS = frozenset(
    {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
     "InstanceNormalization", "GroupNormalization", "BatchNormalization", "RMSNormalization"}
)
ACCUMULATING = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "CumSum", "Pow"})
#: ops that carry no float arithmetic of their own: they follow their input's precision.
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_NUMPY = {ir.DataType.FLOAT16: np.float16, ir.DataType.FLOAT: np.float32, ir.DataType.BFLOAT16: ml_dtypes.bfloat16}


def _is_float(value: ir.Value | None, dtypes: dict[str, str]) -> bool:
    if value is None:
        return False
    if value.dtype is not None:
        return value.dtype == ir.DataType.FLOAT
    return dtypes.get(value.name, "") == "float32"


class Fp16Pass(OptimizePass):
    name = "fp16"

    def __init__(
        self,
        source: CalibrationSource | None,
        *,
        keep_normalization_fp32: bool = True,
        range_guard: bool = True,
        low_precision: ir.DataType = ir.DataType.FLOAT16,
        session: SessionConfig = SessionConfig(),
    ) -> None:
        super().__init__()
        self.source, self.keep_norm, self.range_guard, self.session = source, keep_normalization_fp32, range_guard, session
        self.low = low_precision

    # -- deciding -------------------------------------------------------------------------
    def _observe(self, model: ir.Model) -> tuple[dict[str, float], dict[str, str]]:
        """absmax and dtype of every node output, over the calibration text."""
        names = [v.name for n in model.graph for v in n.outputs if v.name]
        names = [n for n in dict.fromkeys(names) if n not in {o.name for o in model.graph.outputs}] + [
            o.name for o in model.graph.outputs
        ]
        if self.source is None:
            return {}, {}
        report = collect(model, names, self.source.batches(), self.session, channels=False, histogram=False)
        absmax = {name: s.absmax for name, s in report.tensors.items() if s.count}
        return absmax, {name: s.dtype for name, s in report.tensors.items()}

    def _fp32_nodes(self, model: ir.Model, absmax: dict[str, float], dtypes: dict[str, str]) -> dict[str, str]:
        """node name -> why it stays fp32."""
        reasons: dict[str, str] = {}
        for node in model.graph:
            if self.keep_norm and node.op_type in NORMALIZATIONS:
                reasons[node.name] = "normalization kept fp32"
            elif node.op_type in ACCUMULATING:
                reasons[node.name] = "accumulating reduction kept fp32"
            elif self.range_guard:
                for value in [*node.inputs, *node.outputs]:
                    if _is_float(value, dtypes) and value.const_value is None and absmax.get(value.name, 0.0) > FP16_SAFE_MAX:
                        reasons[node.name] = f"{value.name} reaches {absmax[value.name]:.3g} (fp16 safe limit {FP16_SAFE_MAX:.0f})"
                        break
        return reasons

    # -- rewriting ------------------------------------------------------------------------
    def run(self, model: ir.Model) -> bool:
        common.NameFixPass()(model)
        absmax, dtypes = self._observe(model)
        fp32 = self._fp32_nodes(model, absmax, dtypes)
        graph = model.graph
        low = self.low
        low_np = _NUMPY[low]

        def node_precision(node: ir.Node) -> ir.DataType:
            return ir.DataType.FLOAT if node.name in fp32 else low

        # 1. what precision each float value is produced in
        produced: dict[str, ir.DataType] = {}
        for value in graph.inputs:
            if _is_float(value, dtypes):
                produced[value.name] = ir.DataType.FLOAT
        for node in graph:
            precision = node_precision(node)
            for out in node.outputs:
                if _is_float(out, dtypes):
                    produced[out.name] = precision

        # 2. weights: stored once, in the precision most of their readers use
        converted_weights = 0
        for value in list(graph.initializers.values()):
            if value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
                continue
            readers = [node_precision(n) for n, _ in value.uses()]
            if not readers:
                continue
            if Counter(readers).most_common(1)[0][0] == low:
                array = value.const_value.numpy()
                clipped = (np.clip(array, -FP16_MAX, FP16_MAX) if low == ir.DataType.FLOAT16 else array).astype(low_np)
                value.const_value = ir.tensor(clipped, name=value.name)
                value.dtype = low
                produced[value.name] = low
                converted_weights += 1
            else:
                produced[value.name] = ir.DataType.FLOAT

        # 3. casts where a node reads a float value in the other precision (one per value and precision)
        casts: dict[tuple[str, ir.DataType], ir.Value] = {}
        inserted = 0
        for node in list(graph):
            want = node_precision(node)
            if node.op_type == "Cast" and int(node.attributes.get_int("to", 0)) == ir.DataType.FLOAT and want == low:
                node.attributes["to"] = ir.Attr("to", ir.AttributeType.INT, int(low))  # a cast into fp32 now lands in fp16
                continue
            if want == low:
                _lower_tensor_attributes(node, low_np)
            for index, value in enumerate(node.inputs):
                if value is None or value.name not in produced or produced[value.name] == want:
                    continue
                key = (value.name, want)
                if key not in casts:
                    cast = ir.node("Cast", [value], attributes={"to": int(want)}, name=f"{value.name}_to_{want.name.lower()}")
                    cast.outputs[0].name = f"{value.name}_{want.name.lower()}"
                    cast.outputs[0].dtype = want
                    graph.insert_before(node, cast)
                    casts[key] = cast.outputs[0]
                    inserted += 1
                node.replace_input_with(index, casts[key])
            for out in node.outputs:
                if out.name in produced and out.dtype is not None and out.dtype in _FLOAT_TYPES:
                    out.dtype = produced[out.name]

        # 4. graph outputs keep float32
        for position, output in enumerate(list(graph.outputs)):
            if produced.get(output.name, ir.DataType.FLOAT) == ir.DataType.FLOAT:
                continue
            cast = ir.node("Cast", [output], attributes={"to": int(ir.DataType.FLOAT)}, name=f"{output.name}_to_float")
            graph.insert_after(output.producer(), cast)  # type: ignore[arg-type]
            name = output.name
            output.name = f"{name}_{low.name.lower()}"
            adopt(cast.outputs[0], output)
            cast.outputs[0].name, cast.outputs[0].dtype = name, ir.DataType.FLOAT
            graph.outputs[position] = cast.outputs[0]
            inserted += 1

        folded = fold_casts(model)
        common.RemoveUnusedNodesPass()(model)
        low_nodes = sum(1 for n in graph if n.name not in fp32 and n.op_type != "Cast")
        self.stats = {
            "precision": low.name.lower(),
            "fp32_nodes": len(fp32),
            "low_precision_nodes": low_nodes,
            "weights_converted": converted_weights,
            "casts_inserted": inserted,
            "casts_folded": folded,
            "max_observed": round(max(absmax.values(), default=0.0), 2) if absmax else None,
            "kept_fp32": dict(sorted(Counter(fp32.values()).items())),
            "kept_fp32_by_range": sorted(n for n, why in fp32.items() if "safe limit" in why),
        }
        return True


def _lower_tensor_attributes(node: ir.Node, dtype: type) -> None:
    """Constant / ConstantOfShape carry their float value as an attribute: lower it too."""
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.TENSOR and attr.value.dtype == ir.DataType.FLOAT:
            node.attributes[name] = ir.Attr(name, ir.AttributeType.TENSOR, ir.tensor(attr.value.numpy().astype(dtype)))


def fold_casts(model: ir.Model) -> int:
    """Fold Casts of constants into the constants; merge Cast chains that lose nothing."""
    graph = model.graph
    folded = 0
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            if node.op_type != "Cast":
                continue
            source = node.inputs[0]
            to = ir.DataType(int(node.attributes.get_int("to", 0)))
            if source is not None and source.const_value is not None and to in _NUMPY and not source.is_graph_output():
                array = source.const_value.numpy().astype(_NUMPY[to])
                result = node.outputs[0]
                constant = ir.Value(name=f"{result.name}_folded", const_value=ir.tensor(array))
                graph.register_initializer(constant)
                result.replace_all_uses_with(constant, replace_graph_outputs=False)
                if not result.uses() and not result.is_graph_output():
                    graph.remove(node, safe=True)
                folded += 1
                changed = True
                continue
            producer = source.producer() if source is not None else None
            if producer is None or producer.op_type != "Cast" or len(source.uses()) != 1:
                continue
            first_input = producer.inputs[0]
            middle = ir.DataType(int(producer.attributes.get_int("to", 0)))
            original = first_input.dtype if first_input is not None else None
            if original is None or not _widening(original, middle):
                continue  # fp32 -> fp16 -> fp32 rounds: not a no-op
            if original == to:
                node.outputs[0].replace_all_uses_with(first_input, replace_graph_outputs=False)
            else:
                node.replace_input_with(0, first_input)
            folded += 1
            changed = True
        if changed:
            common.RemoveUnusedNodesPass()(model)
    for value in list(graph.initializers.values()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[value.name]
    return folded


def _widening(source: ir.DataType, target: ir.DataType) -> bool:
    """Casting ``source`` to ``target`` loses nothing we care about (ints and bools into floats,
    fp16 into fp32)."""
    if source == target:
        return True
    if target == ir.DataType.FLOAT:
        return source in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.BOOL, ir.DataType.INT8, ir.DataType.UINT8,
                          ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64)
    return source == ir.DataType.BOOL


def runtime_supports(precision: ir.DataType, providers: tuple[str, ...]) -> str | None:
    """None if ONNX Runtime runs a MatMul and an Add in ``precision`` on these providers; else why not."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    elem = int(precision)
    x = helper.make_tensor_value_info("x", elem, [2, 2])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "x"], ["m"]), helper.make_node("Add", ["m", "x"], ["y"])],
        "probe", [x], [helper.make_tensor_value_info("y", elem, [2, 2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - NOT_IMPLEMENTED and friends
        return " ".join(str(exc).split())[:160]
    del onnx
    return None
