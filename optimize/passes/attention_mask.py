"""Replace the exporter's additive attention-bias subgraph by ORT's 2-D ``mask_index``.

torch.export turns ``attention_mask`` into a [batch, 1, seq, seq] float bias through some
twenty Shape/Range/Expand/GatherND/Where nodes. ORT's Attention takes the [batch, seq] 0/1
mask directly as ``mask_index``, and QAttention (the int8 attention) accepts nothing else.

The rewrite is proven, not assumed: the bias subgraph is run on masks with padding at
several shapes and must equal "0 where the key is real, very negative where it is padding"
for every query row. If it does not, the pass changes nothing and says why.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common

from optimize.passes.base import OptimizePass, adopt

#: below this an additive bias drives a softmax weight to exactly 0 in float32.
MASKED_BELOW = -1e4

_PROBES = ((3, 7), (2, 11))


def _bias_of(node: ir.Node) -> ir.Value | None:
    inputs = list(node.inputs)
    if len(inputs) > 5 and inputs[5] is not None and (len(inputs) <= 3 or inputs[3] is None):
        return inputs[5]
    return None


def _probe(model: ir.Model, bias_name: str) -> str | None:
    """None if the bias is the key-padding mask at every probe shape, else the reason."""
    import onnxruntime as ort

    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(bias_name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    for batch, seq in _PROBES:
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq - 2 :] = 0
        mask[-1, seq // 2 :] = 0
        feeds = {
            "input_ids": rng.integers(5, 100, (batch, seq)).astype(np.int64),
            "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), np.int64),
        }
        (bias,) = session.run(None, {n: feeds[n] for n in names})
        if bias.ndim != 4 or bias.shape[0] != batch or bias.shape[-1] != seq:
            return f"attention bias has shape {bias.shape}, not [batch, heads, seq, seq]"
        keys = mask.astype(bool)[:, None, None, :]
        real = np.broadcast_to(keys, bias.shape)
        if np.abs(bias[real]).max(initial=0.0) > 1e-6:
            return "attention bias is not 0 at real key positions (not a padding mask)"
        if bias[~real].size and bias[~real].max() > MASKED_BELOW:
            return "attention bias does not mask padded key positions"
    return None


class AttentionMaskIndexPass(OptimizePass):
    name = "attention-mask-index"

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        attentions = [n for n in graph if n.domain == "com.microsoft" and n.op_type == "Attention" and _bias_of(n) is not None]
        mask_input = next((v for v in graph.inputs if v.name == "attention_mask"), None)
        if not attentions or mask_input is None:
            self.stats = {"converted": 0, "reason": "no Attention node with an attention bias" if mask_input else "no attention_mask input"}
            return False
        biases = {_bias_of(n).name for n in attentions}  # type: ignore[union-attr]
        for name in sorted(biases):
            reason = _probe(model, name)
            if reason is not None:
                self.stats = {"converted": 0, "reason": reason}
                return False
        cast = ir.node("Cast", [mask_input], attributes={"to": ir.DataType.INT32}, name="mask_index_cast")
        cast.outputs[0].name = "mask_index"
        cast.outputs[0].dtype = ir.DataType.INT32
        cast.outputs[0].shape = mask_input.shape
        graph.insert_before(next(iter(graph)), cast)
        for node in attentions:
            inputs = list(node.inputs)[:5]
            while len(inputs) < 4:
                inputs.append(None)
            inputs[3] = cast.outputs[0]
            replacement = ir.node(
                "Attention", inputs, attributes=dict(node.attributes), domain="com.microsoft", name=node.name
            )
            graph.insert_before(node, replacement)
            old = node.outputs[0]
            old.replace_all_uses_with(replacement.outputs[0])
            graph.remove(node, safe=True)
            adopt(replacement.outputs[0], old)
        ir.passes.common.RemoveUnusedNodesPass()(model)
        self.stats = {"converted": len(attentions)}
        return True
