"""Rewrite rules of our own for families whose graphs onnxscript's ORT fusions do not match as
exported. Each rule only reshapes the graph into the form those fusions know; the fusing itself
stays onnxscript's. An architecture description names the rules its graphs need.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir


def _merge_attention_biases() -> list:
    """(scores + bias) + mask -> scores + (bias + mask), for the scores a Softmax reads.

    MPNet adds a relative position bias and then the padding mask to its attention scores;
    onnxscript's SDPA pattern takes one additive mask. Summed first, the two are that mask
    (the add is the same, reassociated) and the layer fuses into ORT's Attention.
    """
    from onnxscript.rewriter import pattern

    def target(op, scores, bias, mask):  # noqa: ANN001, ANN202
        return op.Softmax(op.Add(op.Add(scores, bias), mask), _allow_other_attributes=True, _outputs=["probabilities"])

    def check(context, scores, bias, mask, probabilities, **_) -> bool:  # noqa: ANN001
        producer = scores.producer()
        # the scaled Q.K^T product, not another sum
        return producer is not None and producer.op_type in ("Div", "Mul", "MatMul")

    def replacement(op, scores, bias, mask, probabilities, **_):  # noqa: ANN001, ANN202
        softmax = probabilities.producer()
        return op.Softmax(op.Add(scores, op.Add(bias, mask)), **{k: v for k, v in softmax.attributes.items()})

    return [pattern.RewriteRule(target, replacement, check, name="MergeAttentionBiases")]


RULES: dict[str, Callable[[], list]] = {
    "merge_attention_biases": _merge_attention_biases,
}


def apply(model: ir.Model, names: tuple[str, ...]) -> dict[str, int]:
    """Apply the named rules; how many times each matched."""
    from onnxscript.rewriter import RewriteRuleSet

    counts = {}
    for name in names:
        if name not in RULES:
            continue
        counts[name] = RewriteRuleSet(RULES[name]()).apply_to_model(model)
    return counts
