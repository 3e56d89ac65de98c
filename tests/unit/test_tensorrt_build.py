"""The TensorRT build as far as a CPU can check it: the supported versions, the strongly typed build
configuration as Polygraphy's own loaders hold it, Polygraphy's exceptions as the project's
one-line errors, and the timing cache kept to the GPU that made it. (The build itself, and the
runner, are in tests marked `tensorrt` and benchmarks/gpu_check.py.)"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from optimize.bundle import write_manifest
from optimize.config import EngineConfig, ShapeRange
from optimize.errors import BuildError, Interrupted, OptimizeError
from optimize.passes.trt_ready import TENSORRT_VERSION
from optimize.runtimes import tensorrt as trt_runtime
from optimize.runtimes.timing_cache import LOCK_FILE, carried_files, drop_lock, foreign, origin

REPO = Path(__file__).resolve().parents[2]


def _extra(name: str) -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["optional-dependencies"][name])}


def test_the_tensorrt_extra_resolves_only_to_versions_the_code_supports():
    extra = _extra("tensorrt")
    tensorrt, polygraphy = extra["tensorrt"].specifier, extra["polygraphy"].specifier
    # the lower bound is the parser list the readiness pass checks against
    assert f"{TENSORRT_VERSION}.0" in tensorrt and "10.14.1.48" not in tensorrt
    assert "10.16.1.11" in tensorrt
    assert "11.0.0.114" not in tensorrt and "11.4.0.106" not in tensorrt  # 11: no weak typing; unproven here
    assert tensorrt == SpecifierSet(trt_runtime.TENSORRT_RANGE)  # what unavailable() checks at run time
    assert polygraphy == SpecifierSet(trt_runtime.POLYGRAPHY_RANGE)
    assert "0.49.27" in polygraphy and "0.53.6" in polygraphy and "0.54.0" not in polygraphy
    assert _extra("test")["polygraphy"].specifier == polygraphy


@pytest.mark.parametrize(
    ("name", "version", "supported"),
    [
        ("tensorrt", "10.15.1.29", True),
        ("tensorrt", "10.16.1.11", True),
        ("tensorrt", "10.14.1.48.post1", False),
        ("tensorrt", "11.4.0.106", False),
        ("polygraphy", "0.49.27", True),
        ("polygraphy", "0.53.6", True),
        ("polygraphy", "0.48.1", False),
    ],
)
def test_an_installed_version_outside_the_range_is_named_in_one_line(name, version, supported):
    problem = trt_runtime.version_problem(name, version)
    if supported:
        assert problem is None
    else:
        assert version in problem and "pip install" in problem and "\n" not in problem


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_both_precisions_build_strongly_typed_without_precision_flags(precision, tmp_path):
    """TensorRT's explicit-quantization guidance, and TensorRT 11's only mode: the graph's types decide."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache")
    engine = EngineConfig(batch=ShapeRange(1, 4, 8), sequence=ShapeRange(8, 64, 128), workspace_mib=1024)
    network, config = trt_runtime.engine_loaders(tmp_path / "model.onnx", engine, ["input_ids", "attention_mask"], cache, "WORKSPACE")

    assert type(network) is NetworkFromOnnxPath  # parsed as is: no SetLayerPrecisions around it
    assert network.strongly_typed
    assert type(config) is CreateConfig
    assert not (config.fp16 or config.int8 or config.bf16 or config.fp8 or config.tf32)
    assert config.precision_constraints is None and config.calibrator is None
    assert config.memory_pool_limits == {"WORKSPACE": 1024 << 20}
    assert config.timing_cache_path == str(cache)
    (profile,) = config.profiles
    for name in ("input_ids", "attention_mask"):
        shapes = profile[name]
        assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((1, 8), (4, 64), (8, 128))


def test_no_timing_cache_is_loaded_when_the_bundle_has_none(tmp_path):
    _, config = trt_runtime.engine_loaders(tmp_path / "model.onnx", EngineConfig(), ["input_ids"], tmp_path / "timing.cache", "WORKSPACE")
    assert config.timing_cache_path is None


def test_a_polygraphy_exception_becomes_one_line_of_the_projects_error(capsys):
    """EngineFromBytes on bytes that are no engine: without TensorRT Polygraphy cannot import it, with
    TensorRT it cannot deserialize them; either way Polygraphy raises, and the user gets one line."""
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    with pytest.raises(BuildError) as caught:
        with trt_runtime.polygraphy_errors("TensorRT could not load engine.plan", "rebuild it on this GPU with `optimize build B`"):
            EngineFromBytes(b"not an engine")()
    error = caught.value
    assert isinstance(error.__cause__, PolygraphyException)
    assert error.exit_code == 5
    line = error.one_line()
    assert "\n" not in line and line.startswith("TensorRT could not load engine.plan: ") and line.endswith("`optimize build B`")
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # Polygraphy's own log stays off the terminal


def test_tensorrts_logged_reason_is_kept_in_the_line():
    """TensorRT logs the cause as an error before Polygraphy raises its generic exception."""
    from polygraphy.logger import G_LOGGER

    with pytest.raises(BuildError) as caught:
        with trt_runtime.polygraphy_errors("TensorRT could not build the engine", "see the log"):
            G_LOGGER.error("4: [network.cpp::validate::3100] Error Code 4: Internal Error (input_ids: kMAX dimensions in profile 0 are [8,128])")
            G_LOGGER.critical("Invalid Engine. Please ensure the engine was built correctly")
    line = caught.value.one_line()
    assert "Error Code 4" in line and "Invalid Engine" in line and "\n" not in line


def test_an_interrupt_inside_polygraphy_stays_an_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with trt_runtime.polygraphy_errors("building", "fix"):
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        with trt_runtime.polygraphy_errors("building", "fix"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:  # a library wrapping Ctrl-C in its own error
                raise RuntimeError("wrapped") from exc


def test_polygraphy_logging_is_restored_after_the_block():
    from polygraphy.logger import G_LOGGER

    before = (G_LOGGER.use_python_logging_system, G_LOGGER.colors, G_LOGGER.module_severity.get())
    with pytest.raises(OptimizeError):
        with trt_runtime.polygraphy_errors("x", "y"):
            G_LOGGER.critical("boom")
    assert (G_LOGGER.use_python_logging_system, G_LOGGER.colors, G_LOGGER.module_severity.get()) == before


def test_a_timing_cache_is_reused_only_on_the_gpu_and_tensorrt_that_made_it():
    here = origin("10.16.1.11", [{"name": "NVIDIA H200", "driver": "580.1"}])
    assert here == {"gpu": "NVIDIA H200", "tensorrt": "10.16.1.11"}
    assert foreign(dict(here), here) is None
    other_gpu = foreign({"gpu": "NVIDIA A100-SXM4-80GB", "tensorrt": "10.16.1.11"}, here)
    assert "A100" in other_gpu and "H200" in other_gpu and "ignored" in other_gpu and "\n" not in other_gpu
    assert "10.15.1.29" in foreign({"gpu": "NVIDIA H200", "tensorrt": "10.15.1.29"}, here)
    assert "no record" in foreign(None, here)  # a bundle built before the origin was recorded
    assert foreign(dict(here), origin("10.16.1.11", [])) is not None  # no GPU name here: cannot tell


def test_polygraphys_lock_and_a_foreign_cache_stay_out_of_the_rebuilt_bundle(tmp_path):
    from polygraphy import util

    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.onnx", "tokenizer.json", "config.json", "engine.plan", "manifest.json", "timing.cache"):
        (old / name).write_text(name)
    with util.LockFile(str(old / "timing.cache")):  # what CreateConfig and EngineBytesFromNetwork do
        pass
    assert (old / LOCK_FILE).is_file()

    assert [p.name for p in carried_files(old, keep_timing_cache=True)] == ["config.json", "model.onnx", "timing.cache", "tokenizer.json"]
    assert [p.name for p in carried_files(old, keep_timing_cache=False)] == ["config.json", "model.onnx", "tokenizer.json"]

    drop_lock(old)
    write_manifest(old, {"target": "trt-fp16"})
    files = json.loads((old / "manifest.json").read_text())["files"]
    assert LOCK_FILE not in files and "timing.cache" in files
