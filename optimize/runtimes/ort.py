"""ONNX Runtime: session building from a config, and a Runner over the session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from optimize.config import SessionConfig
from optimize.errors import BuildError
from optimize.runtimes.base import Feeds, Runner
from optimize.runtimes.int8_exact import (
    has_int8_products,
    has_int8_qdq_weights,
    int8_products_saturate,
    widen_int8_weights,
)

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: protobuf's hard limit; larger models must be handed to ORT as a file with external data.
_PROTO_LIMIT = 2**31 - 1


def session_options(cfg: SessionConfig) -> ort.SessionOptions:
    if cfg.optimization_level not in _LEVELS:
        raise BuildError(
            f"unknown ONNX Runtime optimization level {cfg.optimization_level!r}",
            f"choose one of: {', '.join(_LEVELS)}",
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[cfg.optimization_level]
    options.intra_op_num_threads = max(0, cfg.threads)
    # One graph stream: encoders are a chain of ops, and a second pool only steals cores.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    for library in cfg.custom_ops:
        options.register_custom_ops_library(custom_ops_library(library))
    return options


#: custom-op libraries a graph may need, by the name the manifest records
CUSTOM_OPS = {"onnxruntime-extensions": "onnxruntime_extensions"}


def custom_ops_library(name: str) -> str:
    """The shared library of a custom-op package, or a BuildError saying how to install it."""
    import importlib

    if name not in CUSTOM_OPS:
        raise BuildError(f"the graph needs custom ops from {name!r}, which this optimize does not know", "re-export the bundle")
    try:
        module = importlib.import_module(CUSTOM_OPS[name])
    except ImportError as exc:
        raise BuildError(
            f"the graph takes raw text and needs {name} (its tokenizer ops), which is not installed",
            "pip install 'optimize[tokenizer]' (onnxruntime-extensions)",
        ) from exc
    return module.get_library_path()


def _model_bytes(model: ir.Model) -> bytes | None:
    proto = ir.serde.serialize_model(model)
    if proto.ByteSize() >= _PROTO_LIMIT:
        return None
    return proto.SerializeToString()


def exact_int8_payload(model: ir.Model | Path | bytes, cfg: SessionConfig, options: ort.SessionOptions) -> bytes | None:
    """Where this CPU's uint8 x int8 kernel saturates (int8_exact.py): the model with its int8
    weights widened to uint8, and ``options`` set to run Q/DQ nodes as written; None where the
    model needs no other bytes."""
    if not cfg.exact_int8 or not int8_products_saturate():
        return None
    import onnx

    if isinstance(model, Path):
        proto = onnx.load(os.fspath(model), load_external_data=False)  # the graph first: most have no int8
        if not has_int8_products(proto.graph.node):
            return None
        onnx.load_external_data_for_model(proto, os.fspath(model.parent))
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        if not has_int8_products(model.graph):
            return None
        proto = ir.serde.serialize_model(model)
    if has_int8_qdq_weights(proto):
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if not widen_int8_weights(proto):
        return None
    return proto.SerializeToString()


def build_session(model: ir.Model | Path | bytes, cfg: SessionConfig, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession over an in-memory graph, its bytes or a file; load failures become BuildError."""
    options = options or session_options(cfg)
    providers = [p for p in cfg.providers if p in ort.get_available_providers()]
    if not providers:
        raise BuildError(
            f"none of the execution providers {', '.join(cfg.providers)} is available in this onnxruntime",
            f"available: {', '.join(ort.get_available_providers())}",
        )
    disabled = list(cfg.disabled_optimizers)
    try:
        widened = exact_int8_payload(model, cfg, options)
        if widened is not None:
            return ort.InferenceSession(widened, options, providers=providers, disabled_optimizers=disabled)
        if isinstance(model, Path):
            return ort.InferenceSession(os.fspath(model), options, providers=providers, disabled_optimizers=disabled)
        payload = model if isinstance(model, bytes) else _model_bytes(model)
        if payload is not None:
            return ort.InferenceSession(payload, options, providers=providers, disabled_optimizers=disabled)
        assert isinstance(model, ir.Model)
        with tempfile.TemporaryDirectory(prefix="optimize-session-") as folder:
            path = Path(folder) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data")
            return ort.InferenceSession(os.fspath(path), options, providers=providers, disabled_optimizers=disabled)
    except BuildError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        message = " ".join(str(exc).split())[:300]
        raise BuildError(
            f"ONNX Runtime could not load the model: {message}",
            "run `optimize inspect` on it, or re-export it with `optimize export`",
        ) from exc


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model: ir.Model | Path, cfg: SessionConfig = SessionConfig()) -> None:
        super().__init__()
        self._model = model
        self._cfg = cfg
        self.session: ort.InferenceSession | None = None

    def activate(self) -> None:
        if self.session is None:
            self.session = build_session(self._model, self._cfg)
        super().activate()

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def _require(self) -> ort.InferenceSession:
        if self.session is None:
            self.activate()
        assert self.session is not None
        return self.session

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._require().get_inputs())

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self._require().get_outputs())

    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        session = self._require()
        outputs = session.run(None, feeds)
        return dict(zip(self.output_names, outputs))

    def run_callable(self, feeds: Feeds):  # -> Callable[[], object]
        """A zero-argument call for timing loops: feeds bound, outputs discarded."""
        session = self._require()
        selected = {name: feeds[name] for name in self.input_names}
        return lambda: session.run(None, selected)


def default_session_difference(model: ir.Model, cfg: SessionConfig) -> dict[str, object]:
    """What a plain ``InferenceSession(model.onnx)`` does differently from ``cfg``: the ops of
    both optimized graphs compared (ORT writes them out); only ``cfg.disabled_optimizers`` can
    differ. Recorded in the manifest, so a user of Optimum or another binding knows."""
    import collections

    import onnx

    if not cfg.disabled_optimizers:
        return {"same_graph": True, "ops_added": {}, "ops_removed": {}}
    counts = []
    with tempfile.TemporaryDirectory(prefix="optimize-default-session-") as folder:
        for index, disabled in enumerate(((), cfg.disabled_optimizers)):
            options = session_options(SessionConfig(threads=1, custom_ops=cfg.custom_ops))
            options.optimized_model_filepath = os.path.join(folder, f"optimized-{index}.onnx")
            build_session(model, SessionConfig(threads=1, custom_ops=cfg.custom_ops, disabled_optimizers=disabled), options)
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
            counts.append(collections.Counter(n.op_type for n in graph.node))
    default, configured = counts
    return {
        "same_graph": default == configured,
        "ops_added": dict(sorted((default - configured).items())),
        "ops_removed": dict(sorted((configured - default).items())),
    }
