"""Exact int8 products on x86 CPUs without a VNNI dot product.

ONNX Runtime's int8 GEMM (MLAS) multiplies uint8 activations by int8 weights. Where the CPU has
a VNNI dot product (AVX-512 VNNI, AVX-VNNI) or AMX, it accumulates in 32 bits and is exact.
Without one (AVX2 alone, AVX-512 before VNNI) its uint8 x int8 kernel adds each pair of products
in 16 bits (``vpmaddubsw``), which saturates: 255 x 127 x 2 > 32767. On an AMD EPYC with AVX2
only, a 384 x 384 MatMulIntegerToFloat of full-range operands was off by up to 23% of its
largest output, and the embedded BERT's ort-int8 export failed its gate (neighbour agreement 0.943
on unseen text; done exactly, 0.972 there and 0.975 on a VNNI CPU).

Its uint8 x uint8 kernel widens to 16 bits before multiplying and is exact. So on such a CPU
the sessions this package builds are handed the int8 weights as uint8 with a zero point of 128
(the same integers shifted: w + 128 - 128 = w). That cost the embedded BERT's int8 bundle 8%
of its time one text at a time and 16-19% in batches of 8 and 32 there. The bundle keeps int8
weights, the fastest form where VNNI or AMX runs them.

A Q/DQ graph (trt-int8, checked in ONNX Runtime before TensorRT sees it) has the same problem one
step later: ORT fuses DequantizeLinear -> MatMul into its uint8 x int8 kernel (int8 activations
shifted to uint8), so its parity check judged a product TensorRT never computes. There the
session runs the Q/DQ nodes as written instead (``session.disable_quant_qdq``): the int8
values dequantized and multiplied in fp32, which is what TensorRT's int8 kernels compute.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from optimize.bench.hardware import cpu_flags

#: ops whose int8 weight is input 1 and whose weight zero point sits at this input index
_WEIGHT_ZERO_POINT_INPUT = {("com.microsoft", "MatMulIntegerToFloat"): 5, ("com.microsoft", "QAttention"): 7}

#: flags of a CPU whose MLAS uint8 x int8 kernel accumulates in 32 bits (no saturation)
_EXACT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_products_saturate(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """True where ONNX Runtime's uint8 x int8 GEMM may saturate: an x86 CPU with none of the
    VNNI/AMX flags. Off Linux the flags are unknown, and an x86 CPU is taken to saturate (the
    exact form costs a little speed, the other can cost accuracy)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # Arm's dot-product and widening kernels accumulate in 32 bits
    flags = flags if flags is not None else cpu_flags()
    return not any(flag in flags for flag in _EXACT_FLAGS)


def has_int8_products(nodes: Iterable) -> bool:
    """Whether any of ``nodes`` (onnx NodeProtos or onnx_ir nodes) is an int8 product or a
    DequantizeLinear (a Q/DQ graph's int8 weights)."""
    return any((node.domain, node.op_type) in _WEIGHT_ZERO_POINT_INPUT or node.op_type == "DequantizeLinear" for node in nodes)


def has_int8_qdq_weights(model: onnx.ModelProto) -> bool:
    """Whether the graph quantizes activations in Q/DQ form (a DequantizeLinear reading a
    QuantizeLinear): what ORT fuses, with the int8 weights beside it, into its uint8 x int8
    kernel. Weights stored int8 alone (DequantizeLinear of a constant) are folded back to fp32."""
    quantized = {node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    return any(node.op_type == "DequantizeLinear" and node.input and node.input[0] in quantized for node in model.graph.node)


def widen_int8_weights(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each int8 weight of an int8 product (MatMulIntegerToFloat, QAttention)
    whose zero point is 0 as uint8 with a zero point of 128: the same product, on the exact
    kernel. Returns how many weights changed. Only graph-level constant weights are touched."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    twins: dict[str, str] = {}  # int8 weight name -> its uint8 twin (a weight may be shared)
    zero_points: dict[tuple[str, tuple[int, ...]], str] = {}  # (twin, shape) -> its zero point of 128
    replaced: set[str] = set()  # int8 weights and zero points that may now be unused
    for node in graph.node:
        zero_point_index = _WEIGHT_ZERO_POINT_INPUT.get((node.domain, node.op_type))
        if zero_point_index is None or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        zero_point = initializers.get(node.input[zero_point_index]) if len(node.input) > zero_point_index else None
        if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            continue  # an asymmetric int8 weight: not written by this package, left as it is
        values = numpy_helper.to_array(weight)
        if weight.name not in twins:
            twin = numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), f"{weight.name}_as_uint8")
            graph.initializer.append(twin)
            twins[weight.name] = twin.name
        twin_name = twins[weight.name]
        shape = tuple(numpy_helper.to_array(zero_point).shape) if zero_point is not None else (values.shape[-1],)
        if (twin_name, shape) not in zero_points:
            name = f"{twin_name}_zero_point" + ("" if not zero_points else f"_{len(zero_points)}")
            graph.initializer.append(numpy_helper.from_array(np.full(shape, 128, np.uint8), name))
            zero_points[(twin_name, shape)] = name
        replaced.add(weight.name)
        if zero_point is not None:
            replaced.add(zero_point.name)
        node.input[1] = twin_name
        while len(node.input) <= zero_point_index:
            node.input.append("")
        node.input[zero_point_index] = zero_points[(twin_name, shape)]
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    kept = [init for init in graph.initializer if init.name in used or init.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(twins)
