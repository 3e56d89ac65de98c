"""Weight-only int8 for embedding tables: the file shrinks, the arithmetic stays fp32.

A table [vocab, hidden] becomes int8 with one scale per row (symmetric); the lookup
gathers int8 rows and their scales and multiplies, three cheap ops on [batch, seq, hidden].
The word embedding is half of all-MiniLM-L6-v2's bytes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimize.calibration.ranges import quantize_weight
from optimize.passes.base import OptimizePass, adopt

#: tables smaller than this stay fp32 (position and token-type embeddings: a few hundred KB).
MIN_ELEMENTS = 1 << 20


class EmbeddingInt8Pass(OptimizePass):
    name = "embedding-int8"

    def __init__(self, min_elements: int = MIN_ELEMENTS) -> None:
        super().__init__()
        self.min_elements = min_elements

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        converted: list[str] = []
        saved = 0
        error = 0.0
        for node in list(graph):
            if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
                continue
            table = node.inputs[0]
            if table is None or table.const_value is None or int(node.attributes.get_int("axis", 0)) != 0:
                continue
            array = table.const_value.numpy()
            if array.ndim != 2 or array.dtype != np.float32 or array.size < self.min_elements:
                continue
            quantized, row_scales = quantize_weight(array, axis=0)  # one scale per row (token)
            scales = row_scales[:, None]  # [vocab, 1]: gathered with the rows, broadcast over hidden
            error = max(error, float(np.abs(quantized * scales - array).max()))
            q_value = ir.Value(name=f"{table.name}_int8", const_value=ir.tensor(quantized))
            s_value = ir.Value(name=f"{table.name}_row_scale", const_value=ir.tensor(scales))
            graph.register_initializer(q_value)
            graph.register_initializer(s_value)
            ids = node.inputs[1]
            rows = ir.node("Gather", [q_value, ids], attributes={"axis": 0}, name=f"{node.name}_int8_rows")
            widened = ir.node("Cast", [rows.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{node.name}_widen")
            row_scales = ir.node("Gather", [s_value, ids], attributes={"axis": 0}, name=f"{node.name}_row_scales")
            scaled = ir.node("Mul", [widened.outputs[0], row_scales.outputs[0]], name=f"{node.name}_dequantize")
            for new in (rows, widened, row_scales, scaled):
                graph.insert_before(node, new)
            old = node.outputs[0]
            old.replace_all_uses_with(scaled.outputs[0], replace_graph_outputs=True)
            graph.remove(node, safe=True)
            adopt(scaled.outputs[0], old)
            if not table.uses():
                del graph.initializers[table.name]
            saved += array.nbytes - quantized.nbytes - scales.nbytes
            converted.append(table.name)
        self.stats = {"tables": converted, "bytes_saved": saved, "max_abs_error": error}
        return bool(converted)
