"""Proof that an exported graph is valid and that its batch and sequence axes are really dynamic."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from optimize.config import SessionConfig
from optimize.errors import ExportError
from optimize.exporter.resolve import LoadedModel

#: a freshly exported fp32 graph must match PyTorch this closely at every probe shape.
PROBE_TOLERANCE = 1e-3

_PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ShapeProbe:
    batch: int
    sequence: int
    max_abs_error: float


def _first_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip().splitlines() or [exc.__class__.__name__])[0].split())[:300]


def check_graph(model: ir.Model, *, strict_shapes: bool = True) -> None:
    """ONNX checker (full check) and, for standard-op graphs, strict shape inference."""
    proto = ir.serde.serialize_model(model)
    try:
        if proto.ByteSize() < _PROTO_LIMIT:
            onnx.checker.check_model(proto, full_check=True)
            if strict_shapes:
                onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        else:  # the checker takes large models by path only
            with tempfile.TemporaryDirectory(prefix="optimize-check-") as folder:
                path = Path(folder) / "model.onnx"
                ir.save(model, path, external_data="model.onnx.data")
                onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"the exported graph is not valid ONNX: {_first_line(exc)}",
            "try another --opset, or report the model and this line",
        ) from exc


def declared_dynamic(model: ir.Model) -> bool:
    """Every input declares symbolic (not fixed) batch and sequence dimensions."""
    for value in model.graph.inputs:
        shape = value.shape
        if shape is None or len(shape) != 2:
            return False
        if any(isinstance(d, int) for d in shape):
            return False
    return True


def probe_feeds(loaded: LoadedModel, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random in-vocabulary tokens with some rows padded, at an exact (batch, sequence) shape."""
    rng = np.random.default_rng(seed + batch * 1000 + sequence)
    vocab = int(getattr(loaded.module.config, "vocab_size", 1000))
    low = min(1000, vocab // 2)
    ids = rng.integers(low, vocab, size=(batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    for row in range(1, batch, 2):  # every other row padded to about half length
        keep = max(1, sequence // 2)
        mask[row, keep:] = 0
        ids[row, keep:] = int(loaded.tokenizer.pad_token_id or 0)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in loaded.input_names}


def prove_dynamic(
    model: ir.Model,
    loaded: LoadedModel,
    shapes: tuple[tuple[int, int], ...],
    session: SessionConfig = SessionConfig(),
) -> list[ShapeProbe]:
    """Run the graph in ONNX Runtime at each shape and compare with PyTorch; ExportError if off."""
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.torch_ref import TorchRunner

    if not declared_dynamic(model):
        raise ExportError(
            "the exported graph has fixed input dimensions",
            "report the model: the exporter should declare batch and sequence dynamic",
        )
    reference = TorchRunner(loaded)
    candidate = OrtRunner(model, session)
    probes: list[ShapeProbe] = []
    for batch, sequence in shapes:
        sequence = min(sequence, loaded.max_sequence)
        feeds = probe_feeds(loaded, batch, sequence)
        try:
            got_all = candidate.infer(feeds)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(
                f"the exported graph fails at batch {batch}, sequence {sequence}: {_first_line(exc)}",
                "the axes are not truly dynamic; try the other capture strategy or another --opset",
            ) from exc
        want_all = reference.infer(feeds)
        error = 0.0
        for name in loaded.outputs:
            got, want = got_all[name], want_all[name]
            if got.shape != want.shape:
                raise ExportError(
                    f"at batch {batch}, sequence {sequence} the graph returns {name} of shape {got.shape}, PyTorch {want.shape}",
                    "report the model and this line",
                )
            error = max(error, float(np.max(np.abs(got.astype(np.float64) - want))))
        if not np.isfinite(error) or error > PROBE_TOLERANCE:
            raise ExportError(
                f"at batch {batch}, sequence {sequence} the exported graph differs from PyTorch by {error:.3g}",
                "the capture changed the computation; try the other capture strategy",
            )
        probes.append(ShapeProbe(batch, sequence, error))
    return probes
