"""Runs a target's passes in order and records what each did.

Like onnx_ir's PassManager, a failure names the pass and the passes that ran before it;
unlike it, each pass's statistics and its effect on the graph are kept for the manifest.
A pass's own PassError (it refused, or did not deliver) goes through as it is; anything else a
pass or its library raises becomes a PassError marked ``internal`` (a bug, not a refusal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from optimize.errors import OptimizeError, PassError, interrupt_behind
from optimize.passes.base import OptimizePass, initializer_bytes, op_counts


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    weight_bytes_before: int
    weight_bytes_after: int
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "modified": self.modified,
            "nodes": [self.nodes_before, self.nodes_after],
            "weight_bytes": [self.weight_bytes_before, self.weight_bytes_after],
            "stats": self.stats,
        }


@dataclass
class PipelineReport:
    records: list[PassRecord]
    final_ops: dict[str, int]
    #: nodes inside If branches and Loop bodies (the unpad pass's per-sequence attention)
    final_ops_in_subgraphs: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        inner = {"final_ops_in_subgraphs": self.final_ops_in_subgraphs} if self.final_ops_in_subgraphs else {}
        return {"passes": [r.as_dict() for r in self.records], "final_ops": self.final_ops, **inner}


class Pipeline:
    def __init__(self, passes: Sequence[OptimizePass]) -> None:
        self.passes = list(passes)

    def __repr__(self) -> str:
        return " -> ".join(p.name for p in self.passes)

    def run(self, model: ir.Model, progress: Callable[[str], None] | None = None) -> PipelineReport:
        records: list[PassRecord] = []
        for index, pass_ in enumerate(self.passes):
            if progress:
                progress(pass_.name)
            nodes_before, bytes_before = sum(1 for _ in model.graph), initializer_bytes(model)
            started = time.perf_counter()
            try:
                result = pass_(model)
            except OptimizeError:
                raise
            except Exception as exc:  # noqa: BLE001 - any library failure becomes a PassError
                interrupted = interrupt_behind(exc)
                if interrupted is not None:
                    raise interrupted from None
                cause = exc.__cause__ or exc
                before = ", ".join(p.name for p in self.passes[:index]) or "none"
                detail = " ".join(str(cause).split())[:240] or cause.__class__.__name__
                raise PassError(
                    f"pass {pass_.name!r} failed after [{before}]: {cause.__class__.__name__}: {detail}",
                    "re-run with OPTIMIZE_DEBUG=1 for the traceback and report it with the model",
                    internal=True,
                ) from exc
            model = result.model
            records.append(
                PassRecord(
                    name=pass_.name,
                    seconds=time.perf_counter() - started,
                    modified=result.modified,
                    nodes_before=nodes_before,
                    nodes_after=sum(1 for _ in model.graph),
                    weight_bytes_before=bytes_before,
                    weight_bytes_after=initializer_bytes(model),
                    stats=dict(pass_.stats),
                )
            )
        return PipelineReport(
            records, dict(sorted(op_counts(model).items())), dict(sorted(op_counts(model, in_subgraphs=True).items()))
        )
