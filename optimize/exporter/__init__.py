"""Model reference -> validated ONNX graph with dynamic batch and sequence axes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import onnx_ir as ir

from optimize.config import ExportConfig, SessionConfig
from optimize.errors import ExportError, InputError
from optimize.exporter.capture import CaptureAttempt, attempt
from optimize.exporter.resolve import LoadedModel, resolve
from optimize.exporter.validate import ShapeProbe, check_graph, prove_dynamic

__all__ = ["ExportResult", "LoadedModel", "export", "resolve"]


@dataclass
class ExportResult:
    model: ir.Model
    strategy: str
    attempts: list[CaptureAttempt]
    probes: list[ShapeProbe]


def _detached(model: ir.Model) -> ir.Model:
    """The graph as a file would hold it: a round trip through the ONNX proto.

    The dynamo exporter hands over an IR whose initializers are views of the module's
    parameters (some non-contiguous, which breaks onnx_ir's hashing passes) and whose
    values carry exporter-side metadata that ONNX shape inference then rejects. After the
    round trip the graph no longer aliases the module the reference keeps running.
    """
    return ir.from_proto(ir.to_proto(model))


def export(loaded: LoadedModel, cfg: ExportConfig, session: SessionConfig = SessionConfig()) -> ExportResult:
    """Capture with each strategy in turn until one yields a graph that validates and proves dynamic."""
    from optimize.config import SUPPORTED_OPSETS

    if cfg.opset not in SUPPORTED_OPSETS:
        raise InputError(
            f"opset {cfg.opset} is not supported",
            f"choose --opset between {SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1} (default 18)",
        )
    attempts: list[CaptureAttempt] = []
    for name in cfg.strategies:
        model, result = attempt(name, loaded, cfg)
        if model is None:
            attempts.append(result)
            continue
        try:
            check_graph(model)
            probes = prove_dynamic(model, loaded, cfg.dynamic_probe_shapes, session)
        except ExportError as exc:
            attempts.append(dataclasses.replace(result, ok=False, reason=f"validation: {exc.problem}"))
            continue
        attempts.append(result)
        model = _detached(model)
        model.producer_name = "optimize"
        return ExportResult(model, name, attempts, probes)
    tried = "; ".join(f"{a.strategy}: {a.reason}" for a in attempts)
    raise ExportError(
        f"no capture strategy produced a valid graph ({tried})",
        "check that the model runs in PyTorch, or try another --opset",
    )
