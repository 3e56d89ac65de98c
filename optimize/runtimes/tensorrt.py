"""TensorRT: engine build through Polygraphy's loaders, a Runner, and ORT-vs-TensorRT parity.

Imported lazily: nothing here runs at import, and ``unavailable()`` says in one line why
TensorRT cannot be used on this machine (not installed, or no NVIDIA GPU/driver).
Written against TensorRT 10 and Polygraphy 0.49+ (``NetworkFromOnnxPath``, ``CreateConfig``,
``Profile``, ``EngineBytesFromNetwork``, ``EngineFromBytes``, ``TrtRunner``, ``Comparator``).

Precision: fp16 bundles are parsed as a strongly typed network, so the graph's own types
(fp16 compute, fp32 normalization) are what TensorRT builds; int8 bundles carry explicit
Q/DQ (TensorRT 10 deprecated implicit calibration) and are built with the INT8 and FP16
flags, normalization layers constrained to fp32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.config import EngineConfig
from optimize.errors import BuildError
from optimize.runtimes.base import Feeds, Runner

INSTALL_HINT = "pip install 'optimize[tensorrt]' on a machine with an NVIDIA GPU"


def unavailable() -> str | None:
    """None if an engine can be built here, else the one-line reason."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed"
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        return "Polygraphy is not installed"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # noqa: BLE001 - TypeError/RuntimeError without a CUDA device
        return f"TensorRT cannot start a builder: no NVIDIA GPU or CUDA driver is visible ({exc.__class__.__name__})"
    if builder is None:
        return "TensorRT cannot start a builder: no NVIDIA GPU or CUDA driver is visible"
    return None


def require() -> None:
    reason = unavailable()
    if reason:
        raise BuildError(f"cannot build a TensorRT engine here: {reason}", INSTALL_HINT)


@dataclass(frozen=True)
class EngineInfo:
    tensorrt: str
    precision: str
    strongly_typed: bool
    profile: dict[str, list[list[int]]]
    build_seconds: float
    engine_bytes: int
    timing_cache: str


def profile_shapes(input_names: list[str], engine: EngineConfig) -> dict[str, list[list[int]]]:
    """min/opt/max shape of every [batch, sequence] input, as the manifest records them."""
    b, s = engine.batch, engine.sequence
    return {name: [[b.minimum, s.minimum], [b.optimum, s.optimum], [b.maximum, s.maximum]] for name in input_names}


def build_engine(onnx_path: Path, precision: str, engine: EngineConfig, input_names: list[str], fp32_layers: list[str], timing_cache: Path) -> tuple[bytes, EngineInfo]:
    """Parse, configure and build; the timing cache is loaded if present and saved after."""
    require()
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile, SetLayerPrecisions

    strongly_typed = precision == "fp16"
    shapes = profile_shapes(input_names, engine)
    profile = Profile()
    for name, (low, opt, high) in shapes.items():
        profile.add(name, min=tuple(low), opt=tuple(opt), max=tuple(high))
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)
    if not strongly_typed and fp32_layers:
        network = SetLayerPrecisions(network, {name: trt.float32 for name in fp32_layers})
    config = CreateConfig(
        fp16=not strongly_typed,
        int8=precision == "int8",
        profiles=[profile],
        precision_constraints=None if strongly_typed else "obey",
        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: engine.workspace_mib << 20},
    )
    started = time.perf_counter()
    try:
        serialized = EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))()
    except Exception as exc:  # noqa: BLE001 - parser and builder failures alike
        raise BuildError(f"TensorRT could not build the engine: {' '.join(str(exc).split())[:240]}", "see `polygraphy inspect model` on the bundle's model.onnx") from exc
    if serialized is None:
        raise BuildError("TensorRT returned no engine", "re-run with a larger --workspace or check the TensorRT log")
    data = bytes(serialized)
    info = EngineInfo(trt.__version__, precision, strongly_typed, shapes, time.perf_counter() - started, len(data), timing_cache.name)
    return data, info


class TrtRunner(Runner):
    """Polygraphy's TrtRunner behind this project's Runner contract."""

    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
        super().__init__()
        self._bytes, self._inputs, self._outputs = engine_bytes, input_names, output_names
        self._runner: Any = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def activate(self) -> None:
        if self._runner is None:
            require()
            from polygraphy.backend.trt import EngineFromBytes
            from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

            self._runner = PolygraphyTrtRunner(EngineFromBytes(self._bytes))
            self._runner.activate()
        super().activate()

    def deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
        super().deactivate()

    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outputs = self._runner.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in outputs.items()}


def bundle_runner(bundle) -> TrtRunner:  # noqa: ANN001 - optimize.bundle.Bundle, imported lazily
    from optimize.bundle import ENGINE_FILE

    engine = bundle.path / ENGINE_FILE
    if not engine.is_file():
        raise BuildError(f"bundle {bundle.path} has no {ENGINE_FILE}", f"build it on the GPU machine with `optimize build {bundle.path}`")
    io = bundle.manifest.get("io", {})
    return TrtRunner(engine.read_bytes(), tuple(i["name"] for i in io.get("inputs", [])), tuple(o["name"] for o in io.get("outputs", [])))


def compare_with_onnxruntime(onnx_path: Path, engine_bytes: bytes, batches: list[Feeds], atol: float, rtol: float) -> dict[str, Any]:
    """Polygraphy's comparator: the same feeds through ONNX Runtime (CPU) and the engine."""
    require()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    runners = [
        OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"])),
        PolygraphyTrtRunner(EngineFromBytes(engine_bytes)),
    ]
    results = Comparator.run(runners, data_loader=batches)
    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    return {"passed": bool(accuracy), "atol": atol, "rtol": rtol, "batches": len(batches)}


def info_dict(info: EngineInfo) -> dict[str, Any]:
    return asdict(info)
