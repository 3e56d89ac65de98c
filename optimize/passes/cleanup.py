"""Cleanup: constant folding, dead code, duplicate initializers, identities, common subexpressions.

Runs before fusion (so patterns see a canonical graph) and after it (fusions leave packed
Q/K/V Concats of initializers and orphaned weights behind).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common

from optimize.passes.base import OptimizePass, initializer_bytes

#: fold any constant subgraph up to this many elements: a packed QKV weight of BERT-large is
#: 1024 x 3072 = 3.1M; folding it here means the artifact ships it folded, once.
FOLD_LIMIT_ELEMENTS = 64 * 1024 * 1024


def make_initializers_contiguous(model: ir.Model) -> int:
    """Constant folding can leave numpy views (a folded Transpose) as initializers, which
    onnx_ir's hashing deduplication rejects ("ndarray is not C-contiguous"); copy them."""
    import numpy as np

    fixed = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray) and not tensor.raw.flags.c_contiguous:
            value.const_value = ir.Tensor(np.ascontiguousarray(tensor.raw), name=tensor.name)
            fixed += 1
    return fixed


class _MultiOutputFoldingNotice(logging.Filter):
    """onnxscript's constant folder warns for every constant node it leaves alone because the
    node has several outputs (DeBERTa's LayerNorm of its relative position embeddings: six lines
    an export on the user's console). Nothing is wrong then, the node just runs: that notice,
    and only it, is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Skipping constant folding for op %s with multiple outputs")


logging.getLogger("onnxscript.optimizer._constant_folding").addFilter(_MultiOutputFoldingNotice())


class CleanupPass(OptimizePass):
    name = "cleanup"

    def __init__(self, fold_limit_elements: int = FOLD_LIMIT_ELEMENTS) -> None:
        super().__init__()
        self.fold_limit_elements = fold_limit_elements

    def run(self, model: ir.Model) -> bool:
        from onnxscript.optimizer import optimize

        nodes_before = sum(1 for _ in model.graph)
        inits_before = len(model.graph.initializers)
        bytes_before = initializer_bytes(model)
        optimize(
            model,
            num_iterations=2,
            input_size_limit=self.fold_limit_elements,
            output_size_limit=self.fold_limit_elements,
        )
        make_initializers_contiguous(model)
        ir.passes.Sequential(
            common.IdentityEliminationPass(),
            common.CommonSubexpressionEliminationPass(),
            common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1024),
            common.DeduplicateHashedInitializersPass(size_limit=self.fold_limit_elements),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
            common.RemoveInitializersFromInputsPass(),
        )(model)
        nodes_after = sum(1 for _ in model.graph)
        self.stats = {
            "nodes_removed": nodes_before - nodes_after,
            "initializers_removed": inits_before - len(model.graph.initializers),
            "weight_bytes_saved": bytes_before - initializer_bytes(model),
        }
        return nodes_after != nodes_before or self.stats["initializers_removed"] != 0
