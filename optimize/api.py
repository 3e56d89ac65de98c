"""The Python API: ``export_model(job)`` runs the whole chain; the CLI only wraps it.

resolve -> export -> passes -> runtime -> parity -> (speed) -> bundle. Each step is one call
with typed inputs and outputs; nothing reaches back up the chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir

from optimize import bundle as bundles
from optimize.bench.hardware import fingerprint, package_versions
from optimize.calibration.batches import token_batches, tokenize
from optimize.calibration.corpus import held_out_paragraphs, parity_texts
from optimize.config import EngineConfig, ExportJob, SessionConfig, SpeedCheckConfig, Tolerances
from optimize.errors import InputError, ParityError
from optimize.exporter import ExportResult, LoadedModel, export, resolve
from optimize.exporter.validate import check_graph
from optimize.parity import ParityReport, compare
from optimize.passes.pipeline import PipelineReport
from optimize.runtimes.base import Feeds
from optimize.targets import PassContext, Target, get_target
from optimize.passes.pipeline import Pipeline


class Reporter(Protocol):
    def phase(self, name: str) -> None: ...
    def note(self, line: str) -> None: ...
    def warn(self, line: str) -> None: ...


class SilentReporter:
    def phase(self, name: str) -> None:
        pass

    def note(self, line: str) -> None:
        pass

    def warn(self, line: str) -> None:
        pass


@dataclass(frozen=True)
class SpeedLine:
    batch: int
    seq_len: int
    threads: int
    pytorch_ms: float
    artifact_ms: float
    speedup: float
    spread: tuple[float, float]
    rounds: int

    def summary(self) -> str:
        return (
            f"{self.artifact_ms:.1f} ms vs PyTorch eager fp32 {self.pytorch_ms:.1f} ms = {self.speedup:.2f}x faster "
            f"(batch {self.batch}, sequence {self.seq_len}, {self.threads} threads; median of {self.rounds} rounds of "
            f"alternating blocks, range {self.spread[0]:.2f}-{self.spread[1]:.2f}x)"
        )


@dataclass
class ExportOutcome:
    output: Path
    target: str
    manifest: dict[str, Any]
    parity: ParityReport
    speed: SpeedLine | None
    notes: list[str] = field(default_factory=list)


def session_for(target: Target, job: ExportJob, threads: int | None = None) -> SessionConfig:
    """The job's session settings with the target's required ones (disabled optimizers) applied."""
    disabled = tuple(dict.fromkeys((*job.session.disabled_optimizers, *target.session.disabled_optimizers)))
    return dataclasses.replace(
        job.session, disabled_optimizers=disabled, threads=job.session.threads if threads is None else threads
    )


def parity_batches(loaded: LoadedModel, job: ExportJob) -> list[Feeds]:
    texts = list(dict.fromkeys(parity_texts(job.parity.path, job.parity.size)))  # exact duplicates tie neighbours
    return list(
        token_batches(
            loaded.tokenizer,
            texts,
            loaded.input_names,
            batch_size=job.parity.batch_size,
            seq_len=min(job.parity.seq_len, loaded.max_sequence),
        )
    )


def speed_feeds(loaded: LoadedModel, batch: int, seq_len: int) -> Feeds:
    """``batch`` rows of exactly ``seq_len`` real tokens: held-out text joined until long enough."""
    text = " ".join(held_out_paragraphs())
    feeds = tokenize(loaded.tokenizer, [text] * batch, loaded.input_names, seq_len, pad_to_max=True)
    return feeds


def measure_speed(loaded: LoadedModel, model: ir.Model, session: SessionConfig, cfg: SpeedCheckConfig) -> SpeedLine:
    import torch

    from optimize.bench.harness import Schedule, alternate
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.torch_ref import TorchRunner

    seq_len = min(cfg.seq_len, loaded.max_sequence)
    feeds = speed_feeds(loaded, cfg.batch, seq_len)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        artifact = OrtRunner(model, dataclasses.replace(session, threads=cfg.threads))
        engines = {"pytorch": TorchRunner(loaded).run_callable(feeds), "artifact": artifact.run_callable(feeds)}
        schedule = Schedule(rounds=cfg.rounds, block_runs=cfg.block_runs, dropped_per_block=cfg.dropped_per_block)
        timing = alternate(engines, schedule)
    finally:
        torch.set_num_threads(previous_threads)
    return SpeedLine(
        batch=cfg.batch,
        seq_len=seq_len,
        threads=cfg.threads,
        pytorch_ms=timing.median_seconds("pytorch") * 1e3,
        artifact_ms=timing.median_seconds("artifact") * 1e3,
        speedup=timing.ratio("pytorch", "artifact"),
        spread=timing.spread("pytorch", "artifact"),
        rounds=cfg.rounds,
    )


def _io_signature(model: ir.Model) -> dict[str, list[dict[str, Any]]]:
    def describe(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": v.dtype.name if v.dtype is not None else None,
                "shape": [d if isinstance(d, int) else str(d) for d in (v.shape or [])],
            }
            for v in values
        ]

    return {"inputs": describe(model.graph.inputs), "outputs": describe(model.graph.outputs)}


def build_manifest(
    job: ExportJob,
    target: Target,
    loaded: LoadedModel,
    exported: ExportResult,
    report: PipelineReport,
    parity: ParityReport,
    speed: SpeedLine | None,
    session: SessionConfig,
    model: ir.Model,
) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target.name,
        "runtime": target.runtime,
        "precision": target.precision,
        "task": loaded.task,
        "source": {
            "reference": loaded.source,
            "description": loaded.description,
            "sha256": loaded.source_hash,
            "architecture": loaded.architecture,
            "model_type": loaded.model_type,
            "layers": loaded.num_layers,
            "hidden": loaded.hidden_size,
            "heads": loaded.num_heads,
            "max_sequence": loaded.max_sequence,
            "tested_architecture": loaded.family.tested,
            "sentence_pipeline": dataclasses.asdict(loaded.sentence) if loaded.sentence else None,
        },
        "export": {
            "opset": job.export.opset,
            "strategy": exported.strategy,
            "attempts": [dataclasses.asdict(a) for a in exported.attempts],
            "dynamic_probes": [dataclasses.asdict(p) for p in exported.probes],
        },
        "io": _io_signature(model),
        "passes": report.as_dict(),
        "parity": parity.as_dict(),
        "speed": dataclasses.asdict(speed) if speed else None,
        "session": {
            "optimization_level": session.optimization_level,
            "disabled_optimizers": list(session.disabled_optimizers),
            "why": "ONNX Runtime would re-fuse what the passes deliberately left unfused; load the "
            "model with these settings (optimize.runtimes.ort.build_session does)",
        },
        "notes": list(loaded.notes),
        "versions": package_versions(),
        "hardware": fingerprint(),
    }


def export_model(job: ExportJob, reporter: Reporter | None = None) -> ExportOutcome:
    """Model reference -> parity-checked bundle at ``job.output``; raises OptimizeError subclasses."""
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.torch_ref import TorchRunner

    reporter = reporter or SilentReporter()
    target = get_target(job.target)
    if target.preflight:
        target.preflight(job)
    bundles.preflight(Path(job.output).absolute(), job.force)

    reporter.phase("loading the model")
    loaded = resolve(job.model, job.export.task if job.export.task else None, seed=job.seed)
    reporter.note(f"model: {loaded.description}")
    for line in loaded.notes:
        reporter.warn(line)
    for line in loaded.hints:
        reporter.note(f"hint: {line}")
    if job.export.seq_len > loaded.max_sequence:
        raise InputError(
            f"--seq-len {job.export.seq_len} is longer than the model allows ({loaded.max_sequence} positions)",
            f"pass --seq-len {loaded.max_sequence} or less",
        )

    reference = loaded  # parity and speed are always against the unpruned PyTorch model
    held_out = parity_batches(loaded, job)  # pruning keeps the tokenizer: one tokenization serves all
    pruning = None
    if job.prune.enabled:
        from optimize.pruning import prune

        reporter.phase("pruning")
        pruned = prune(loaded, job.prune, job.calibration, held_out, progress=reporter.phase)
        loaded, pruning = pruned.loaded, pruned.report
        reporter.note(prune_summary(pruning))

    reporter.phase("exporting to ONNX")
    exported = export(loaded, job.export)
    model = exported.model

    reporter.phase(f"running the {target.name} passes")
    pipeline = Pipeline(target.passes(PassContext(loaded, job)))
    report = pipeline.run(model, progress=lambda name: reporter.phase(f"pass: {name}"))
    for record in report.records:
        for fusion, why in record.stats.get("missing", {}).items():
            reporter.warn(f"expected fusion {fusion} did not happen: {why}")
    check_graph(model, strict_shapes=False)

    reporter.phase("checking parity against PyTorch fp32")
    session = session_for(target, job)
    candidate = OrtRunner(model, session)
    tolerances = target.tolerances(loaded.task, job)
    if pruning is not None:
        tolerances = pruned_tolerances(tolerances, job)
    parity = compare(
        TorchRunner(reference),
        candidate,
        held_out,
        task=loaded.task,
        output=loaded.output_name,
        tolerances=tolerances,
    )
    if not parity.ok:
        if pruning is not None:  # the cut, not the target, is the likelier cause: say what helps it
            hint = "add recovery (e.g. --recover 850), prune less, or lower --prune-min-cosine"
            if job.prune.recover_steps:
                hint = "prune less, recover longer, or lower --prune-min-cosine"
        else:
            hint = "choose a higher-precision target or relax the budget where the target allows it"
        raise ParityError(f"{target.name} artifact is out of tolerance: {'; '.join(parity.failures)} (no bundle written)", hint)

    speed = None
    if job.speed.enabled and target.runtime == "tensorrt":
        reporter.note("speed: not timed here; a TensorRT bundle is timed on its GPU with `optimize bench` after `optimize build`")
    elif job.speed.enabled:
        reporter.phase("timing side by side with PyTorch")
        speed = measure_speed(reference, model, session, job.speed)

    reporter.phase("writing the bundle")
    manifest = build_manifest(job, target, loaded, exported, report, parity, speed, session, model)
    manifest["pruning"] = pruning
    output = Path(job.output).absolute()
    notes = list(loaded.notes)
    if not loaded.family.tested:  # the generic path: said in the output and the manifest
        line = generic_path_line(loaded.model_type)
        notes.append(line)
        manifest["notes"] = [*manifest["notes"], line]
    with bundles.staged(output, job.force) as staging:
        bundles.save_model(model, staging)
        loaded.tokenizer.save_pretrained(staging)
        loaded.module.config.to_json_file(staging / "config.json")
        if target.runtime == "tensorrt":
            manifest["tensorrt"] = tensorrt_section(model, loaded.input_names, job.engine)
            reason = tensorrt_unavailable()
            if reason is None:
                reporter.phase("building the TensorRT engine")
                manifest["tensorrt"]["engine"] = build_engine_into(staging, manifest, held_out, job.engine)
            else:
                line = (
                    f"engine not built: {reason}; copy {output} to the GPU machine, "
                    f"`pip install 'optimize[tensorrt]'`, then run `optimize build {output}`"
                )
                manifest["tensorrt"]["engine_note"] = line
                notes.append(line)
        bundles.write_manifest(staging, manifest)
    final = json.loads((output / bundles.MANIFEST_FILE).read_text())
    return ExportOutcome(output, target.name, final, parity, speed, notes)


def generic_path_line(model_type: str) -> str:
    from optimize.architectures import tested_names

    return f"architecture {model_type} is not in the tested list ({', '.join(tested_names())}); parity was checked"


def pruned_tolerances(tolerances: Tolerances, job: ExportJob) -> Tolerances:
    """The looser of the target's tolerances and the pruning ones (--prune-min-cosine)."""
    cfg = job.prune
    return dataclasses.replace(
        tolerances,
        cosine_mean=min(tolerances.cosine_mean, cfg.min_cosine),
        cosine_min=min(tolerances.cosine_min, cfg.min_cosine_floor),
        neighbour_agreement=min(tolerances.neighbour_agreement, cfg.min_agreement),
        label_agreement=min(tolerances.label_agreement, max(cfg.min_agreement, 0.9)),
        max_abs_error=None,
    )


def prune_summary(report: dict[str, Any]) -> str:
    similarity = report["pytorch_similarity"]
    stages = [("cut", similarity["after_cut"]), ("reconstructed", similarity["after_reconstruction"])]
    if similarity["after_recovery"]:
        stages.append(("recovered", similarity["after_recovery"]))
    figures = ", ".join(f"{name} {s['cosine_mean']:.4f}" for name, s in stages)
    return (
        f"pruned: encoder parameters {report['encoder_params_after'] / 1e6:.2f}M of {report['encoder_params_before'] / 1e6:.2f}M "
        f"({report['encoder_params_kept_share']:.0%}), heads kept {report['heads_kept']}, FFN neurons kept "
        f"{report['neurons_kept']}; PyTorch cosine mean vs unpruned: {figures}"
    )


def tensorrt_unavailable() -> str | None:
    from optimize.runtimes.tensorrt import unavailable

    return unavailable()


def tensorrt_section(model: ir.Model, input_names: tuple[str, ...], engine: EngineConfig) -> dict[str, Any]:
    """What a TensorRT build needs to know: profiles, which layers stay fp32, the parser checked."""
    from optimize.passes.fp16 import NORMALIZATIONS
    from optimize.passes.trt_ready import TENSORRT_VERSION
    from optimize.runtimes.tensorrt import profile_shapes

    return {
        "parser_checked": TENSORRT_VERSION,
        "profile": profile_shapes(list(input_names), engine),
        "fp32_layers": [n.name for n in model.graph if n.op_type in NORMALIZATIONS],
        "workspace_mib": engine.workspace_mib,
        "engine": None,
    }


def build_engine_into(folder: Path, manifest: dict[str, Any], batches: list[Feeds], engine: EngineConfig) -> dict[str, Any]:
    """Build engine.plan in ``folder`` (timing cache beside it) and compare it with ONNX Runtime."""
    from optimize.runtimes.tensorrt import build_engine, compare_with_onnxruntime, info_dict

    section = manifest["tensorrt"]
    inputs = [i["name"] for i in manifest["io"]["inputs"]]
    data, info = build_engine(
        folder / bundles.MODEL_FILE, manifest["precision"], engine, inputs, section["fp32_layers"], folder / bundles.TIMING_CACHE_FILE
    )
    (folder / bundles.ENGINE_FILE).write_bytes(data)
    tolerance = 5e-2 if manifest["precision"] == "int8" else 1e-2
    comparison = compare_with_onnxruntime(folder / bundles.MODEL_FILE, data, batches, atol=tolerance, rtol=tolerance)
    if not comparison["passed"]:
        raise ParityError(
            f"the TensorRT engine differs from ONNX Runtime beyond atol/rtol {tolerance} (Polygraphy comparator)",
            "rebuild with a newer TensorRT or report the model; the engine was not kept",
        )
    return {**info_dict(info), "ort_comparison": comparison}


def build_bundle(path: Path, engine: EngineConfig | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """`optimize build`: add engine.plan to a TensorRT bundle, on the machine that will run it."""
    import copy
    import shutil

    from optimize.config import ShapeRange
    from optimize.runtimes.tensorrt import require
    from optimize.untrusted import load_untrusted

    reporter = reporter or SilentReporter()
    bundle = bundles.read_bundle(path)
    if bundle.manifest.get("runtime") != "tensorrt":
        raise InputError(
            f"bundle {path} is for target {bundle.target}, not a TensorRT target",
            "export with --target trt-fp16 or --target trt-int8 to get a bundle `optimize build` can build",
        )
    load_untrusted(bundle.model_path)  # never hand an unchecked file to a parser
    require()
    if engine is None:
        recorded = bundle.manifest["tensorrt"]["profile"]
        first = next(iter(recorded.values()))
        engine = EngineConfig(
            batch=ShapeRange(first[0][0], first[1][0], first[2][0]),
            sequence=ShapeRange(first[0][1], first[1][1], first[2][1]),
            workspace_mib=int(bundle.manifest["tensorrt"].get("workspace_mib", 4096)),
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle.path)
    inputs = tuple(i["name"] for i in bundle.manifest["io"]["inputs"])
    texts = list(dict.fromkeys(parity_texts(None, 64)))
    batches = list(token_batches(tokenizer, texts, inputs, batch_size=min(16, engine.batch.maximum), seq_len=engine.sequence.maximum))
    manifest = copy.deepcopy(bundle.manifest)
    with bundles.staged(path, True) as staging:
        for item in bundle.path.iterdir():  # the timing cache among them: the build reuses it
            if item.is_file() and item.name not in (bundles.ENGINE_FILE, bundles.MANIFEST_FILE):
                shutil.copy2(item, staging / item.name)
        reporter.phase("building the TensorRT engine")
        from optimize.runtimes.tensorrt import profile_shapes

        manifest["tensorrt"]["profile"] = profile_shapes(list(inputs), engine)
        manifest["tensorrt"]["engine"] = build_engine_into(staging, manifest, batches, engine)
        manifest["tensorrt"].pop("engine_note", None)
        manifest["hardware_engine"] = fingerprint()
        manifest = {k: v for k, v in manifest.items() if k not in ("format", "files")}
        bundles.write_manifest(staging, manifest)
    return json.loads((path / bundles.MANIFEST_FILE).read_text())
