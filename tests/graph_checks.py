"""Checks on saved ONNX files shared by tests."""

from __future__ import annotations

import onnx


def cast_chains(path) -> int:
    """How many Cast nodes read the output of another Cast."""
    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    return sum(1 for n in graph.node if n.op_type == "Cast" and n.input[0] in producers and producers[n.input[0]].op_type == "Cast")
