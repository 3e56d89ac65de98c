"""TensorRT readiness: a graph TensorRT's ONNX parser will take, proven before any GPU is near.

Checks, each an error naming the node: only the default ONNX domain (no com.microsoft
contrib ops), only operators the parser supports, an opset in the parser's range,
Q/DQ pairs that are int8 with zero point 0 (TensorRT quantizes symmetrically only).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from optimize.errors import PassError
from optimize.passes.base import OptimizePass

#: From onnx-tensorrt docs/operators.md for TensorRT 10.15 ("supports operators in the
#: inclusive range of opset 9 to opset 24"): every operator marked Y.
TENSORRT_VERSION = "10.15"
TENSORRT_OPSETS = range(9, 25)
TENSORRT_SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
    RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)


def problems(model: ir.Model) -> list[str]:
    """Every reason TensorRT's parser would reject this graph (empty: ready)."""
    found: list[str] = []
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset not in TENSORRT_OPSETS:
        found.append(f"opset {opset} is outside TensorRT {TENSORRT_VERSION}'s {TENSORRT_OPSETS.start}-{TENSORRT_OPSETS.stop - 1}")
    for node in model.graph:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{where} is in domain {node.domain!r} (TensorRT's parser knows only standard ONNX)")
        elif node.op_type not in TENSORRT_SUPPORTED_OPS:
            found.append(f"{where} is not supported by TensorRT {TENSORRT_VERSION}'s ONNX parser")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = node.inputs[2] if len(node.inputs) > 2 else None
            quantized = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
            if zero_point is None or zero_point.const_value is None:
                found.append(f"{where} has no constant zero point")
                continue
            values = zero_point.const_value.numpy()
            if values.dtype != np.int8 or values.any():
                found.append(f"{where} is not symmetric int8 (zero point {values.dtype} {values.ravel()[:3].tolist()})")
            if quantized is not None and quantized.dtype is not None and quantized.dtype != ir.DataType.INT8:
                found.append(f"{where} quantizes to {quantized.dtype.name}, not INT8")
    return found


class TrtReadinessPass(OptimizePass):
    """Fails the export with the first problems if TensorRT's parser would reject the graph."""

    name = "trt-ready"

    def run(self, model: ir.Model) -> bool:
        found = problems(model)
        if found:
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            raise PassError(
                f"the graph is not TensorRT-ready: {'; '.join(found[:3])}{more}",
                "report the model: the trt targets should only produce what TensorRT's parser takes",
            )
        ops = Counter(n.op_type for n in model.graph)
        self.stats = {"tensorrt": TENSORRT_VERSION, "operators": dict(sorted(ops.items()))}
        return False
