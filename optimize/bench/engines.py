"""The engines a benchmark times: a bundle in its runtime, and the baselines beside it.

Baselines are what a user would otherwise deploy: PyTorch eager fp32 (``torch``) and ONNX
Runtime's own default path (``ort-default``: torch.onnx.export, default session, no passes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from optimize.bundle import Bundle
import onnx_ir as ir

from optimize.config import SessionConfig
from optimize.errors import InputError
from optimize.exporter.resolve import LoadedModel, resolve
from optimize.runtimes.base import Feeds


@dataclass
class Engine:
    name: str
    run: Callable[[Feeds], Any]
    input_names: tuple[str, ...]
    file_bytes: int | None = None


def bundle_session(bundle: Bundle, threads: int) -> SessionConfig:
    recorded = bundle.manifest.get("session", {})
    return SessionConfig(
        threads=threads,
        optimization_level=recorded.get("optimization_level", "all"),
        disabled_optimizers=tuple(recorded.get("disabled_optimizers", ())),
    )


def bundle_engine(bundle: Bundle, threads: int, name: str | None = None) -> Engine:
    from optimize.runtimes.ort import OrtRunner

    if [i.get("name") for i in bundle.manifest.get("io", {}).get("inputs", [])] == ["text"]:
        raise InputError(
            f"bundle {bundle.path} takes raw text (--with-tokenizer); `optimize bench` times tokenized bundles at set shapes",
            "bench the same export without --with-tokenizer",
        )
    runtime = bundle.manifest.get("runtime", "onnxruntime")
    if runtime != "onnxruntime":
        from optimize.runtimes.tensorrt import bundle_runner

        runner = bundle_runner(bundle)
    else:
        runner = OrtRunner(bundle.model_path, bundle_session(bundle, threads))
    runner.activate()
    size = sum(e["bytes"] for n, e in bundle.manifest.get("files", {}).items() if n.startswith("model.onnx"))
    return Engine(name or bundle.path.name, runner.infer, runner.input_names, size)


@lru_cache(maxsize=4)
def source_model(reference: str, task: str, expected_hash: str) -> LoadedModel:
    """The PyTorch model a bundle was compiled from, checked against the manifest's hash."""
    loaded = resolve(reference, task)
    if expected_hash and loaded.source_hash != expected_hash:
        raise InputError(
            f"the model at {reference!r} is not the one this bundle was compiled from (sha256 differs)",
            "benchmark on the machine that has the source model, or pass --baseline none",
        )
    return loaded


def source_of(bundle: Bundle) -> LoadedModel:
    source = bundle.manifest.get("source", {})
    return source_model(str(source.get("reference")), str(bundle.manifest.get("task")), str(source.get("sha256", "")))


def torch_engine(loaded: LoadedModel, threads: int) -> Engine:
    import torch

    from optimize.runtimes.torch_ref import TorchRunner

    torch.set_num_threads(threads)
    runner = TorchRunner(loaded)
    return Engine("pytorch", runner.infer, runner.input_names)


def _ort_engine(name: str, model: ir.Model, threads: int) -> Engine:
    from optimize.passes.base import initializer_bytes
    from optimize.runtimes.ort import OrtRunner

    runner = OrtRunner(model, SessionConfig(threads=threads))
    runner.activate()
    return Engine(name, runner.infer, runner.input_names, initializer_bytes(model))


def ort_default_engine(loaded: LoadedModel, threads: int) -> Engine:
    """What ONNX Runtime gives with no help: a plain export in a default session."""
    from optimize.bench.baselines import plain_export

    return _ort_engine("ort-default", plain_export(loaded), threads)


def ort_quantize_dynamic_engine(loaded: LoadedModel, threads: int) -> Engine:
    from optimize.bench.baselines import quantize_dynamic_default

    return _ort_engine("ort-quantize-dynamic", quantize_dynamic_default(loaded), threads)


def ort_quantize_static_engine(loaded: LoadedModel, threads: int) -> Engine:
    from optimize.bench.baselines import quantize_static_default

    return _ort_engine("ort-quantize-static", quantize_static_default(loaded), threads)


BASELINES: dict[str, Callable[[LoadedModel, int], Engine]] = {
    "torch": torch_engine,
    "ort-default": ort_default_engine,
    "ort-quantize-dynamic": ort_quantize_dynamic_engine,
    "ort-quantize-static": ort_quantize_static_engine,
}


def baseline_engine(name: str, loaded: LoadedModel, threads: int) -> Engine:
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}", f"choose from: {', '.join(BASELINES)}, or none")
    return BASELINES[name](loaded, threads)
