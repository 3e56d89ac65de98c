"""Attention-mask fill values that half precision can hold.

torch.export writes key padding as ``Where(mask, 0, -3.4e38)`` added to the attention
scores. In fp16 that constant is -inf, and a range guard would (rightly) keep the whole
softmax path in fp32. BERT's own value, -10000 (ONNX Runtime's ``mask_filter_value`` too),
drives exp() to exactly 0 in fp16 and fp32 alike, so real rows compute the same. (A row whose
every key is padding, which a tokenizer never produces, would average instead of being 0.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimize.passes.base import OptimizePass

MASK_FILL = -10000.0
#: a constant at or below this feeding a Where is a mask fill, not data.
_FILL_BELOW = -65504.0


class MaskFillPass(OptimizePass):
    name = "mask-fill"

    def run(self, model: ir.Model) -> bool:
        replaced = 0
        fills: dict[str, ir.Value] = {}  # one replacement per constant: DeBERTa and ModernBERT share one across layers
        for node in model.graph:
            if node.op_type != "Where":
                continue
            for index, value in enumerate(node.inputs[1:], start=1):
                if value is None or value.const_value is None or value.const_value.size != 1:
                    continue
                array = value.const_value.numpy()
                if not np.issubdtype(array.dtype, np.floating) or float(array.reshape(-1)[0]) > _FILL_BELOW:
                    continue
                fill = fills.get(value.name)
                if fill is None:
                    fill = ir.Value(name=f"{value.name}_mask_fill", const_value=ir.tensor(np.full(array.shape, MASK_FILL, array.dtype)))
                    model.graph.register_initializer(fill)
                    fills[value.name] = fill
                node.replace_input_with(index, fill)
                replaced += 1
        for value in list(model.graph.initializers.values()):
            if not value.uses() and not value.is_graph_output():
                del model.graph.initializers[value.name]
        self.stats = {"fills_replaced": replaced, "fill": MASK_FILL}
        return bool(replaced)
