"""What every pass of this project is: an onnx_ir in-place pass that records its statistics."""

from __future__ import annotations

import abc
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir

Stats = dict[str, Any]


class OptimizePass(ir.passes.InPlacePass, abc.ABC):
    """An in-place graph rewrite with a name and the statistics of its last run.

    Subclasses implement ``run(model) -> bool`` (whether the graph changed) and fill
    ``self.stats``; options are constructor arguments.
    """

    #: short, stable identifier used in manifests and error messages.
    name: str = "pass"

    def __init__(self) -> None:
        super().__init__()
        self.stats: Stats = {}

    @abc.abstractmethod
    def run(self, model: ir.Model) -> bool: ...

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = {}
        modified = self.run(model)
        return ir.passes.PassResult(model, bool(modified))

    def __repr__(self) -> str:
        return self.name


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's array if it is an initializer or constant, else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def op_counts(model: ir.Model, in_subgraphs: bool = False) -> Counter[str]:
    """Nodes by ``domain::op`` (plain op name for the default domain): of the main graph, or with
    ``in_subgraphs`` of the graphs inside its nodes (If branches, Loop bodies) and theirs."""
    if in_subgraphs:
        nodes = [
            n
            for top in model.graph
            for attr in top.attributes.values()
            if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for graph in (attr.value if attr.type == ir.AttributeType.GRAPHS else [attr.value])
            for n in ir.traversal.RecursiveGraphIterator(graph)
        ]
    else:
        nodes = list(model.graph)
    return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in nodes)


def initializer_bytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def adopt(new: ir.Value, old: ir.Value) -> None:
    """``new`` takes ``old``'s name and whatever type and shape ``old`` declared, so names
    downstream (graph outputs among them) stay stable after a node is replaced."""
    new.name = old.name
    if old.dtype is not None:
        new.dtype = old.dtype
    if old.shape is not None:
        new.shape = old.shape
