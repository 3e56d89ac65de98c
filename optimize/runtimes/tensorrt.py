"""TensorRT: engine build through Polygraphy's loaders, a Runner, and the engine-vs-ONNX Runtime check.

Imported lazily: nothing here runs at import, and ``unavailable()`` says in one line why
TensorRT cannot be used on this machine (not installed, a version outside the supported range,
or no NVIDIA GPU/driver). Written against TensorRT >=10.15,<11 and Polygraphy 0.49-0.53
(``NetworkFromOnnxPath``, ``CreateConfig``, ``Profile``, ``EngineBytesFromNetwork``,
``EngineFromBytes``, ``TrtRunner``, ``CompareFunc.simple``); pyproject's ``tensorrt`` extra
holds the same bounds (a test keeps them equal).

Precision: every bundle is built as a strongly typed network, with no precision flags and no
layer precisions. The graph's own types are what TensorRT builds: the trt-fp16 graph computes
in fp16 with normalization in fp32; the trt-int8 graph carries explicit symmetric Q/DQ, so
its quantized MatMuls run in int8 and everything else in the type the graph gives it (fp32).
That is TensorRT's guidance for explicit quantization ("use explicit quantization with strong
typing; precision-control build flags are not required and should not be specified"), and the
only mode TensorRT 11 has (it removed BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS and
ILayer.precision).

Errors: Polygraphy raises ``PolygraphyException`` (from ``G_LOGGER.critical``) and the
TensorRT bindings raise their own; ``polygraphy_errors`` turns each into the project's one-line
error, with the TensorRT log line that explains it, and keeps Polygraphy's log off the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.config import EngineConfig, Tolerances
from optimize.errors import BuildError, OptimizeError, interrupt_behind
from optimize.parity import ParityReport, compare_outputs
from optimize.runtimes.base import Feeds, Runner
from optimize.runtimes.trt_profile import profile_shapes

INSTALL_HINT = "pip install 'optimize[tensorrt]' on a machine with an NVIDIA GPU"

#: the versions this module is written and checked against; pyproject's `tensorrt` extra says the same
TENSORRT_MINIMUM = (10, 15)  # the parser list optimize/passes/trt_ready.py checks graphs against
TENSORRT_BELOW = (11, 0)  # not proven on TensorRT 11 (no GPU at hand); see README "Deploying to a GPU"
POLYGRAPHY_MINIMUM = (0, 49)
POLYGRAPHY_BELOW = (0, 54)
TENSORRT_RANGE = f">={TENSORRT_MINIMUM[0]}.{TENSORRT_MINIMUM[1]},<{TENSORRT_BELOW[0]}"
POLYGRAPHY_RANGE = f">={POLYGRAPHY_MINIMUM[0]}.{POLYGRAPHY_MINIMUM[1]},<{POLYGRAPHY_BELOW[0]}.{POLYGRAPHY_BELOW[1]}"


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string: "10.16.1.11" -> (10, 16)."""
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    major, minor = (numbers + [0, 0])[:2]
    return major, minor


def version_problem(name: str, version: str) -> str | None:
    """Why this TensorRT or Polygraphy version is not one the code supports (None: it is)."""
    low, below, spec = (
        (TENSORRT_MINIMUM, TENSORRT_BELOW, TENSORRT_RANGE) if name == "tensorrt" else (POLYGRAPHY_MINIMUM, POLYGRAPHY_BELOW, POLYGRAPHY_RANGE)
    )
    if low <= _release(version) < below:
        return None
    return f"{name} {version} is installed; this optimize supports {name}{spec} (pip install '{name}{spec}')"


def unavailable() -> str | None:
    """None if an engine can be built here, else the one-line reason."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed"
    try:
        import polygraphy
    except ImportError:
        return "Polygraphy is not installed"
    for name, version in (("tensorrt", trt.__version__), ("polygraphy", polygraphy.__version__)):
        problem = version_problem(name, version)
        if problem:
            return problem
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


def device_here() -> dict[str, str]:
    """The GPU and TensorRT an engine built now is tied to (recorded beside its timing cache)."""
    import tensorrt as trt

    from optimize.bench.hardware import fingerprint
    from optimize.runtimes.timing_cache import origin

    return origin(trt.__version__, fingerprint()["gpus"])


class _Recent(logging.Handler):
    """Keeps the last error lines Polygraphy (and TensorRT, through Polygraphy's logger) logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: deque[str] = deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _debug() -> bool:
    return os.environ.get("OPTIMIZE_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def _polygraphy_log() -> Iterator[_Recent]:
    """Polygraphy prints to stdout and stderr; here its errors go to a buffer instead (OPTIMIZE_DEBUG=1: as usual)."""
    from polygraphy.logger import G_LOGGER

    recent = _Recent()
    if _debug():
        yield recent
        return
    logger = logging.getLogger("Polygraphy")
    saved = (G_LOGGER.use_python_logging_system, G_LOGGER.colors, logger.propagate, logger.level)
    G_LOGGER.colors = False  # else its first message checks for the `colored` module and prints about it
    G_LOGGER.use_python_logging_system = True
    logger.propagate, logger.level = False, logging.ERROR
    logger.addHandler(recent)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            yield recent
    finally:
        logger.removeHandler(recent)
        G_LOGGER.use_python_logging_system, G_LOGGER.colors, logger.propagate, logger.level = saved


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def translated(exc: Exception, problem: str, fix: str, logged: Iterable[str] = (), error: type[OptimizeError] = BuildError) -> BaseException:
    """The project's error for a Polygraphy or TensorRT exception (an interrupt stays an interrupt)."""
    interrupted = interrupt_behind(exc)
    if interrupted is not None:
        return interrupted
    said = _one_line(str(exc)) or exc.__class__.__name__
    # TensorRT's own explanation comes as an error log line before Polygraphy's generic exception
    lines = [_one_line(re.sub(r"^\[[A-Z!]\]\s*", "", line)) for line in logged]
    cause = next((line for line in lines if line and line not in said), None)
    detail = f"{_one_line(cause, 200)}; {said}" if cause else said
    return error(f"{problem}: {_one_line(detail)}", fix)


@contextlib.contextmanager
def polygraphy_errors(problem: str, fix: str, error: type[OptimizeError] = BuildError) -> Iterator[None]:
    """Run Polygraphy/TensorRT calls quietly; any exception they raise becomes ``error(problem: why; fix)``."""
    with _polygraphy_log() as recent:
        try:
            yield
        except OptimizeError:
            raise
        except Exception as exc:  # noqa: BLE001 - PolygraphyException, and whatever the bindings raise
            raise translated(exc, problem, fix, list(recent.lines), error) from exc


@dataclass(frozen=True)
class EngineInfo:
    tensorrt: str
    precision: str
    strongly_typed: bool
    profile: dict[str, list[list[int]]]
    build_seconds: float
    engine_bytes: int
    timing_cache: str
    #: the GPU and TensorRT the engine and its timing cache were made with (see timing_cache.py)
    device: dict[str, str] = field(default_factory=dict)


def engine_loaders(onnx_path: Path, engine: EngineConfig, input_names: list[str], timing_cache: Path | None, workspace_pool: Any) -> tuple[Any, Any]:
    """Polygraphy's network and config loaders for a bundle; nothing is parsed or built until called.

    Strongly typed, for both precisions: no fp16/int8 flags, no precision constraints, no layer
    precisions (the graph's types decide; see the module docstring). ``workspace_pool`` is the key
    of the workspace limit, ``tensorrt.MemoryPoolType.WORKSPACE`` (passed in: this function runs
    without TensorRT, so tests can check the arguments on any machine).
    """
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, (low, opt, high) in profile_shapes(input_names, engine).items():
        profile.add(name, min=tuple(low), opt=tuple(opt), max=tuple(high))
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    config = CreateConfig(
        profiles=[profile],
        load_timing_cache=str(timing_cache) if timing_cache is not None and timing_cache.is_file() else None,
        memory_pool_limits={workspace_pool: engine.workspace_mib << 20},
    )
    return network, config


def build_engine(onnx_path: Path, precision: str, engine: EngineConfig, input_names: list[str], timing_cache: Path, device: dict[str, str]) -> tuple[bytes, EngineInfo]:
    """Parse, configure and build; the timing cache is loaded if present and saved after.

    The caller leaves out a timing cache made elsewhere (timing_cache.foreign): Polygraphy
    would merge it into the new one on saving.
    """
    require()
    import tensorrt as trt
    from polygraphy.backend.trt import EngineBytesFromNetwork

    from optimize.runtimes.timing_cache import drop_lock

    network, config = engine_loaders(onnx_path, engine, input_names, timing_cache, trt.MemoryPoolType.WORKSPACE)
    started = time.perf_counter()
    try:
        with polygraphy_errors("TensorRT could not build the engine", "see `polygraphy inspect model` on the bundle's model.onnx, or a larger --workspace"):
            serialized = EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))()
    finally:
        drop_lock(timing_cache.parent)
    if not serialized:
        raise BuildError("TensorRT returned no engine", "re-run with a larger --workspace, or OPTIMIZE_DEBUG=1 for TensorRT's log")
    data = bytes(serialized)
    info = EngineInfo(
        trt.__version__, precision, True, profile_shapes(input_names, engine), time.perf_counter() - started, len(data), timing_cache.name, device
    )
    return data, info


class TrtRunner(Runner):
    """Polygraphy's TrtRunner behind this project's Runner contract."""

    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, input_names: tuple[str, ...], output_names: tuple[str, ...], where: str = "engine.plan") -> None:
        super().__init__()
        self._bytes, self._inputs, self._outputs, self._where = engine_bytes, input_names, output_names, where
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

            # an engine built by another TensorRT version or for another GPU fails here
            with polygraphy_errors(f"TensorRT could not load {self._where}", "rebuild it on this GPU with `optimize build BUNDLE`"):
                runner = PolygraphyTrtRunner(EngineFromBytes(self._bytes))
                runner.activate()
            self._runner = runner
        super().activate()

    def deactivate(self) -> None:
        if self._runner is not None:
            with polygraphy_errors("TensorRT could not release the engine", "report it with the command line"):
                self._runner.deactivate()
            self._runner = None
        super().deactivate()

    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        # No logging context here: this runs once per timed call in `optimize bench`. Shapes are
        # checked against the profile before they get here; anything else still becomes one line.
        try:
            outputs = self._runner.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - PolygraphyException from set_input_shape and the like
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise translated(exc, f"TensorRT could not run {self._where} on {shapes}", "feed shapes within the engine's profile (`optimize inspect` the bundle)") from exc
        # Polygraphy returns views of host buffers it reuses on the next call: copy them out
        return {k: np.array(v.cpu() if hasattr(v, "cpu") else v, copy=True) for k, v in outputs.items()}


def bundle_runner(bundle) -> TrtRunner:  # noqa: ANN001 - optimize.bundle.Bundle, imported lazily
    from optimize.bundle import ENGINE_FILE

    engine = bundle.path / ENGINE_FILE
    if not engine.is_file():
        raise BuildError(f"bundle {bundle.path} has no {ENGINE_FILE}", f"build it on the GPU machine with `optimize build {bundle.path}`")
    io = bundle.manifest.get("io", {})
    return TrtRunner(
        engine.read_bytes(), tuple(i["name"] for i in io.get("inputs", [])), tuple(o["name"] for o in io.get("outputs", [])), str(engine)
    )


class _ErrorStatistics:
    """Polygraphy's per-output error statistics (``CompareFunc.simple``), gathered over batches."""

    def __init__(self) -> None:
        self.per_output: dict[str, dict[str, list[float]]] = {}

    def add(self, results: dict[str, Any]) -> None:
        for name, result in results.items():
            seen = self.per_output.setdefault(name, {})
            for stat in ("max_absdiff", "mean_absdiff", "max_reldiff", "mean_reldiff"):
                value = getattr(result, stat, None)
                if value is not None:
                    seen.setdefault(stat, []).append(float(value))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {stat: float(max(values) if stat.startswith("max") else np.mean(values)) for stat, values in stats.items()}
            for name, stats in self.per_output.items()
        }


@dataclass(frozen=True)
class EngineCheck:
    parity: ParityReport
    #: per output: max over batches of Polygraphy's max abs/rel difference, mean of its means;
    #: over every element (padding tokens too), for diagnosis: the verdict is ``parity``'s
    polygraphy: dict[str, dict[str, float]]
    batches: int

    @property
    def ok(self) -> bool:
        return self.parity.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.ok,
            "judged_by": "optimize.parity: cosine mean/min and agreement against the target's tolerances",
            "parity": self.parity.as_dict(),
            "polygraphy": self.polygraphy,
            "batches": self.batches,
        }


def compare_with_onnxruntime(
    reference: Runner, engine: Runner, batches: Iterable[Feeds], *, task: str, output: str, tolerances: Tolerances
) -> EngineCheck:
    """The same feeds through ONNX Runtime (``reference``) and the engine, judged as export parity is
    judged (``optimize.parity``), with Polygraphy's per-output error statistics kept beside the verdict.
    The batches must fit the engine's profile (trt_profile.cut_to_profile, ProfileFit)."""
    from polygraphy import comparator
    from polygraphy.comparator import IterationResult
    from polygraphy.logger import G_LOGGER

    statistics = _ErrorStatistics()
    count = 0

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray, Feeds]]:
        nonlocal count
        # Polygraphy 0.53 has SimpleCompareFunc and deprecates CompareFunc.simple (gone in 0.60); 0.49 has only the latter
        simple = getattr(comparator, "SimpleCompareFunc", None)
        compare_func = simple(check_shapes=True) if simple is not None else comparator.CompareFunc.simple(check_shapes=True)
        for feeds in batches:
            want, got = reference.infer(feeds), engine.infer(feeds)
            with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):  # statistics, not failures: its log would say FAILED
                results = compare_func(IterationResult(want, runner_name=reference.name), IterationResult(got, runner_name=engine.name))
            statistics.add(results)
            count += 1
            yield want, got, feeds  # every output: a task may be judged on several (QA's start and end)

    with polygraphy_errors("comparing the TensorRT engine with ONNX Runtime failed", "rebuild with `optimize build`, or OPTIMIZE_DEBUG=1 for the log"):
        report = compare_outputs(pairs(), task=task, tolerances=tolerances)
    return EngineCheck(report, statistics.as_dict(), count)


def info_dict(info: EngineInfo) -> dict[str, Any]:
    return asdict(info)
