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
from optimize.calibration.batches import by_length, token_batches, tokenize
from optimize.calibration.corpus import TextSet, held_out_paragraphs, parity_sets, parity_texts
from optimize.config import EngineConfig, ExportJob, SessionConfig, SpeedCheckConfig, Tolerances
from optimize.errors import InputError, ParityError
from optimize.exporter import ExportResult, LoadedModel, export, resolve
from optimize.exporter.validate import check_graph
from optimize.parity import ParityReport, compare
from optimize.passes.pipeline import PipelineReport
from optimize.runtimes.base import Feeds, Runner
from optimize.textdata import Rows
from optimize.training import checked_name, training_device
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
    parity: ParityReport  # held-out text of the calibration domains
    speed: SpeedLine | None
    notes: list[str] = field(default_factory=list)
    #: text of a domain no calibration source holds; None where it was turned off
    unseen: ParityReport | None = None


def session_for(target: Target, job: ExportJob, threads: int | None = None) -> SessionConfig:
    """The job's session settings with the target's required ones (disabled optimizers) applied."""
    disabled = tuple(dict.fromkeys((*job.session.disabled_optimizers, *target.session.disabled_optimizers)))
    return dataclasses.replace(
        job.session, disabled_optimizers=disabled, threads=job.session.threads if threads is None else threads
    )


@dataclass(frozen=True)
class ParityText:
    """One set of parity texts, tokenized once for every comparison that uses it."""

    texts: TextSet
    batches: list[Feeds]


def parity_batches(loaded: LoadedModel, job: ExportJob) -> list[ParityText]:
    """The held-out text of the calibration domains first, then the unseen domain."""
    sets = parity_sets(job.parity.path, job.calibration.path, job.parity.size, job.parity.unseen_size, job.calibration.text_column)
    seq_len = min(job.parity.seq_len, loaded.max_sequence)
    # each set in order of length: its figures are over all its texts, and batches pad far less
    sets = [dataclasses.replace(s, texts=tuple(by_length(loaded.tokenizer, s.texts, seq_len))) for s in sets]
    return [
        ParityText(text_set, list(token_batches(loaded.tokenizer, text_set.texts, loaded.input_names, batch_size=job.parity.batch_size, seq_len=seq_len)))
        for text_set in sets
    ]


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
    if any(v.name == "text" for v in model.graph.inputs):  # a raw-text graph (--with-tokenizer) times its tokenizer too
        import numpy as np

        # the text those tokens spell, not the whole corpus the feeds were cut from
        text = loaded.tokenizer.decode(feeds["input_ids"][0], skip_special_tokens=True)
        feeds["text"] = np.array([text] * cfg.batch, dtype=object)
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


def raw_text_preflight(target: Target, job: ExportJob) -> None:
    """--with-tokenizer: refused in one line where it cannot work, before any model is loaded."""
    from optimize.exporter.text_input import require_extensions

    if target.runtime == "tensorrt":
        raise InputError(
            f"--with-tokenizer puts string ops (the tokenizer) into the graph, and TensorRT has no string ops ({target.name})",
            "use --with-tokenizer with an ort-* target, or tokenize in the application for TensorRT",
        )
    if job.evaluation.enabled:
        raise InputError("--eval-data is not supported with --with-tokenizer", "judge the tokenized export with --eval-data, then export again with --with-tokenizer")
    require_extensions()


def session_section(session: SessionConfig, model: ir.Model, target: Target) -> dict[str, Any]:
    """The session settings optimize.load applies, and what a plain InferenceSession (Optimum,
    onnxruntime-node, another binding) does differently on this very graph."""
    from optimize.runtimes.ort import default_session_difference

    section: dict[str, Any] = {
        "optimization_level": session.optimization_level,
        "disabled_optimizers": list(session.disabled_optimizers),
        "why": "ONNX Runtime would re-fuse what the passes deliberately left unfused; optimize.load applies these settings",
    }
    if session.custom_ops:
        section["custom_ops"] = list(session.custom_ops)
    if target.runtime == "onnxruntime":
        difference = default_session_difference(model, session)
        if difference["same_graph"]:
            difference["note"] = "a default InferenceSession runs the same graph: these settings change nothing here"
        else:
            difference["note"] = (
                f"a default InferenceSession adds {', '.join(difference['ops_added'])} where the graph keeps the padded "
                "layout (unpad does not apply here): the same outputs within parity (tests/integration/test_interop.py), "
                "but ONNX Runtime's CPU kernel for SkipLayerNormalization is slower than Add + LayerNormalization "
                "(optimize/passes/fusion.py); pass these settings where the binding allows"
            )
        section["default_session"] = difference
    return section


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
        "session": session_section(session, model, target),
        "notes": list(loaded.notes),
        "versions": package_versions(),
        "hardware": fingerprint(),
    }


def export_preflight(job: ExportJob) -> Target:
    """What can be refused about ``job`` before PyTorch or the model loads (seconds on a small
    machine): the target and its own checks, flags that need a kind of target, the output
    folder, a misspelt --train-device, and whether the model reference points anywhere. The CLI
    runs it before it imports PyTorch, so a typo is answered at once; export_model runs it again
    for library callers."""
    from optimize.exporter.resolve import locate

    target = get_target(job.target)
    if target.preflight:
        target.preflight(job)
    if job.quant.qat_steps and target.int8 is None:
        raise InputError(
            f"--qat trains for int8, and target {target.name} is not an int8 target",
            "use --target ort-int8 or trt-int8 with --qat, or drop --qat",
        )
    if job.export.with_tokenizer:
        raw_text_preflight(target, job)
    bundles.preflight(Path(job.output).absolute(), job.force)
    checked_name(job.training.device)
    locate(job.model)
    return target


def export_model(job: ExportJob, reporter: Reporter | None = None) -> ExportOutcome:
    """Model reference -> parity-checked bundle at ``job.output``; raises OptimizeError subclasses."""
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.torch_ref import TorchRunner

    reporter = reporter or SilentReporter()
    target = export_preflight(job)
    # where something will train, a device that is absent or cannot compute (asks PyTorch)
    trains = bool((job.prune.enabled and job.prune.recover_steps) or job.quant.qat_steps)
    train_device = training_device(job.training.device) if trains else "cpu"

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

    if job.export.with_tokenizer:
        from optimize.exporter.text_input import refusal

        why = refusal(loaded.tokenizer, loaded.task)
        if why:
            raise InputError(f"--with-tokenizer cannot serve this model: {why}", "export without --with-tokenizer and tokenize in the application")
    reference = loaded  # parity and speed are always against the unpruned PyTorch model
    parity_text = parity_batches(loaded, job)  # pruning keeps the tokenizer: one tokenization serves all
    if job.prune.enabled and job.calibration.path is None:
        reporter.note(
            "pruning fits the model to the built-in calibration text (four domains); "
            "pass --calibration FILE with your own text to fit it to what it will see"
        )
    pruning = None
    if job.prune.enabled:
        from optimize.pruning import prune

        reporter.phase("pruning")
        pruned = prune(
            loaded, job.prune, job.calibration, {p.texts.key: p.batches for p in parity_text}, progress=reporter.phase, device=train_device
        )
        loaded, pruning = pruned.loaded, pruned.report
        reporter.note(prune_summary(pruning))

    qat = None
    if job.quant.qat_steps:
        assert target.int8 is not None
        layer_map = pruning["layers_kept"] if pruning else None  # --drop-layers: which teacher layer each one learns
        loaded, qat = _quantization_aware(loaded, reference, target, job, reporter, train_device, layer_map)

    reporter.phase("exporting to ONNX")
    exported = export(loaded, job.export)
    model = exported.model

    reporter.phase(f"running the {target.name} passes")
    pipeline = Pipeline(target.passes(PassContext(loaded, job, qat.schemes if qat else None)))
    report = pipeline.run(model, progress=lambda name: reporter.phase(f"pass: {name}"))
    for record in report.records:
        for fusion, why in record.stats.get("missing", {}).items():
            reporter.warn(f"expected fusion {fusion} did not happen: {why}")
    raw_text = None
    if job.export.with_tokenizer:
        from optimize.exporter.text_input import EXTENSIONS, texts_into, with_tokenizer

        reporter.phase("putting the tokenizer into the graph")
        model, raw_text = with_tokenizer(model, loaded.tokenizer, loaded.input_names, min(job.export.seq_len, loaded.max_sequence))
        for p in parity_text:  # the raw-text graph reads the texts; the PyTorch reference their tokens
            texts_into(p.batches, p.texts.texts, job.parity.batch_size)
    check_graph(model, strict_shapes=False)

    reporter.phase("checking parity against PyTorch fp32")
    session = session_for(target, job)
    if raw_text is not None:
        session = dataclasses.replace(session, custom_ops=(EXTENSIONS,))
    candidate = OrtRunner(model, session)
    tolerances = target.tolerances(loaded.task, job)
    if pruning is not None:
        tolerances = pruned_tolerances(tolerances, job)
    if job.evaluation.enabled and loaded.task == "text-classification":
        # the task judges a classifier (--eval-data): one text whose decision flips (a probability
        # cosine near 0) is what accuracy measures, not a defect of its own; the mean, the label
        # agreement and the accuracy gate still hold
        tolerances = dataclasses.replace(tolerances, cosine_min=0.0)
    torch_reference = TorchRunner(reference)
    reports = [
        compare(torch_reference, candidate, p.batches, task=loaded.task, output=loaded.output_name, tolerances=tolerances, texts=p.texts.label)
        for p in parity_text
    ]
    parity, unseen = reports[0], (reports[1] if len(reports) > 1 else None)
    failures = [f"{r.texts}: {f}" for r in reports for f in r.failures]
    if failures:
        if pruning is not None:  # the cut, not the target, is the likelier cause: say what helps it
            hint = "add recovery (e.g. --recover 850), prune less, or lower --prune-min-cosine"
            if job.prune.recover_steps:
                hint = "prune less, recover longer, or lower --prune-min-cosine"
        else:
            hint = "choose a higher-precision target or relax the budget where the target allows it"
        if unseen is not None and not unseen.ok and parity.ok and job.calibration.path is None:
            hint += "; or calibrate on text like yours with --calibration FILE"
        after = next((f" after {plan}" for r in report.records if (plan := int8_plan(r.stats))), "")
        raise ParityError(f"{target.name} artifact is out of tolerance{after}: {'; '.join(failures)} (no bundle written)", hint)
    domain_gap = unseen_domain_gap(parity, unseen)
    if domain_gap:
        reporter.warn(domain_gap)
    evaluation = None
    if job.evaluation.enabled:
        reporter.phase("evaluating on the labelled rows (--eval-data)")
        evaluation = accuracy_gate(reference, candidate, loaded, job, target)
        reporter.note(
            f"accuracy on {evaluation['rows']} rows of {job.evaluation.path.name}: {evaluation['source']['accuracy']:.4f} -> "
            f"{evaluation['artifact']['accuracy']:.4f} ({evaluation['accuracy_drop']:+.2f} points, allowed {job.evaluation.max_accuracy_drop})"
        )

    speed = None
    if job.speed.enabled and target.runtime == "tensorrt":
        reporter.note("speed: not timed here; a TensorRT bundle is timed on its GPU with `optimize bench` after `optimize build`")
    elif job.speed.enabled:
        reporter.phase("timing side by side with PyTorch")
        speed = measure_speed(reference, model, session, job.speed)

    reporter.phase("writing the bundle")
    manifest = build_manifest(job, target, loaded, exported, report, parity, speed, session, model)
    manifest["parity_unseen_domain"] = unseen.as_dict() if unseen else None
    manifest["pruning"] = pruning
    manifest["qat"] = qat.report if qat else None
    manifest["evaluation"] = evaluation
    manifest["tokenizer_in_graph"] = raw_text
    output = Path(job.output).absolute()
    notes = list(loaded.notes) + ([domain_gap] if domain_gap else [])
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
                manifest["tensorrt"]["engine"] = build_engine_into(staging, manifest, parity_text[0].batches, job.engine)
            else:
                line = (
                    f"engine not built: {reason}; copy {output} to the GPU machine, "
                    f"`pip install 'optimize[tensorrt]'`, then run `optimize build {output}`"
                )
                manifest["tensorrt"]["engine_note"] = line
                notes.append(line)
        bundles.write_manifest(staging, manifest)
    final = json.loads((output / bundles.MANIFEST_FILE).read_text())
    return ExportOutcome(output, target.name, final, parity, speed, notes, unseen)


#: the unseen domain is "much worse" when it loses this many times the mean cosine the
#: calibration domains lose, and at least UNSEEN_GAP_MIN in absolute terms
UNSEEN_GAP_RATIO = 2.0
UNSEEN_GAP_MIN = 0.005


def unseen_domain_gap(seen: ParityReport, unseen: ParityReport | None) -> str | None:
    """A line when the artifact holds up much worse on the unseen domain than on the calibration
    domains: the compression learned its calibration text, and the user's text may be unlike it."""
    if unseen is None:
        return None
    lost_seen, lost_unseen = 1.0 - seen.cosine_mean, 1.0 - unseen.cosine_mean
    if lost_unseen < UNSEEN_GAP_MIN or lost_unseen < UNSEEN_GAP_RATIO * lost_seen:
        return None
    return (
        f"on {unseen.texts} the artifact keeps cosine {unseen.cosine_mean:.4f} against {seen.cosine_mean:.4f} on "
        f"{seen.texts}: its compression fits the calibration text; calibrate on text like yours with --calibration FILE"
    )


def gate_rows(job: ExportJob) -> Rows:
    """The --eval-data rows the gate judges on: every row whose text no calibration, fit or
    recovery read (a user may pass overlapping files)."""
    from optimize.calibration.corpus import RECOVERY_TEXTS_MAX, calibration_texts
    from optimize.textdata import read_rows

    cfg = job.evaluation
    assert cfg.path is not None
    rows = read_rows(cfg.path, text_column=cfg.text_column, label_column=cfg.label_column, flag="--eval-data")
    seen = set(calibration_texts(job.calibration.path, RECOVERY_TEXTS_MAX, job.calibration.text_column))
    keep = [i for i, text in enumerate(rows.texts) if text not in seen]
    if not keep:
        raise InputError(
            f"every row of --eval-data {cfg.path} is also calibration text", "evaluate on rows the calibration never saw"
        )
    assert rows.labels is not None
    return Rows(rows.path, tuple(rows.texts[i] for i in keep), tuple(rows.labels[i] for i in keep))


def accuracy_gate(reference: LoadedModel, candidate: Runner, loaded: LoadedModel, job: ExportJob, target: Target) -> dict[str, Any]:
    """--eval-data: the artifact against its source model on the user's labelled rows; a drop past
    --max-accuracy-drop is a ParityError (exit 6, no bundle)."""
    from optimize.evaluation import compare_on_rows, label_ids, predict
    from optimize.runtimes.torch_ref import TorchRunner

    if loaded.task != "text-classification":
        raise InputError(
            f"--eval-data measures classification accuracy, and this is a {loaded.task} export",
            "pass --task text-classification with a classifier, or drop --eval-data",
        )
    rows = gate_rows(job)
    config = reference.module.config
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    assert rows.labels is not None
    truth = label_ids(rows.labels, id2label, rows.path)
    seq_len = min(job.export.seq_len, reference.max_sequence)
    source = predict(TorchRunner(reference), reference.tokenizer, reference.input_names, rows.texts, seq_len, output=reference.output_name)
    artifact = predict(candidate, loaded.tokenizer, loaded.input_names, rows.texts, seq_len, output=loaded.output_name)
    report = compare_on_rows(truth, source, artifact, [id2label[i] for i in sorted(id2label)])
    limit = job.evaluation.max_accuracy_drop
    if report.accuracy_drop > limit:
        low, high = report.drop_interval
        raise ParityError(
            f"{target.name} artifact loses {report.accuracy_drop:.2f} accuracy points on {report.rows} rows of {rows.path.name} "
            f"({report.source.accuracy:.4f} -> {report.artifact.accuracy:.4f}, 95% interval {low:+.2f} to {high:+.2f}) "
            f"> --max-accuracy-drop {limit} (no bundle written)",
            "compress less (a higher-precision target, less --prune, more --recover or --qat steps) or allow a larger drop",
        )
    return {**report.as_dict(), "file": str(rows.path), "max_accuracy_drop": limit}


def _quantization_aware(  # -> (LoadedModel, QatOutcome)
    loaded: LoadedModel, reference: LoadedModel, target: Target, job: ExportJob, reporter: Reporter, device: str,
    layer_map: list[int] | None,
):
    """--qat: the post-training int8 plan first (the target's passes on a first export), then the
    model trained under it against the unpruned fp32 model."""
    from optimize.passes.int8 import Int8Pass
    from optimize.quantization.qat import quantization_aware_distillation

    assert target.int8 is not None
    reporter.phase("quantization-aware distillation: the post-training plan to start from")
    passes = target.passes(PassContext(loaded, job))
    Pipeline(passes).run(export(loaded, job.export).model)
    plan = next(p for p in passes if isinstance(p, Int8Pass)).plan
    trained, qat = quantization_aware_distillation(
        loaded, reference.module, target.int8, plan, job.calibration, job.quant.qat_steps, progress=reporter.phase, device=device,
        layer_map=layer_map,
    )
    reporter.note(
        f"quantization-aware distillation: {len(plan)} int8 layers planned, {job.quant.qat_steps} steps on "
        f"{qat.report['texts']} texts on {qat.report['device']}, loss {qat.report['loss_first']} -> {qat.report['loss_last']}, "
        f"{qat.report['seconds']:.0f} s"
    )
    return trained, qat


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
        label_agreement=min(tolerances.label_agreement, cfg.min_label_agreement),
        max_abs_error=None,
    )


def prune_summary(report: dict[str, Any]) -> str:
    similarity = report["pytorch_similarity"]
    stages = [("cut", similarity["after_cut"]), ("reconstructed", similarity["after_reconstruction"])]
    if similarity["after_recovery"]:
        stages.append(("recovered", similarity["after_recovery"]))
    def figure(name: str, s: dict[str, Any]) -> str:
        unseen = s.get("unseen_domain")
        return f"{name} {s['cosine_mean']:.4f}" + (f" ({unseen['cosine_mean']:.4f} unseen domain)" if unseen else "")

    figures = ", ".join(figure(name, s) for name, s in stages)
    recovery = report["recovery"]
    trained = f"; recovery {recovery['steps']} steps on {recovery['device']}, {recovery['seconds']:.0f} s" if recovery else ""
    return (
        f"pruned: encoder parameters {report['encoder_params_after'] / 1e6:.2f}M of {report['encoder_params_before'] / 1e6:.2f}M "
        f"({report['encoder_params_kept_share']:.0%}), heads kept {report['heads_kept']}, FFN neurons kept "
        f"{report['neurons_kept']}; PyTorch cosine mean vs unpruned: {figures}{trained}"
    )


def tensorrt_unavailable() -> str | None:
    from optimize.runtimes.tensorrt import unavailable

    return unavailable()


def tensorrt_section(model: ir.Model, input_names: tuple[str, ...], engine: EngineConfig) -> dict[str, Any]:
    """What a TensorRT build needs to know: the profile, the workspace, the parser and versions checked."""
    from optimize.passes.trt_ready import TENSORRT_VERSION
    from optimize.runtimes.tensorrt import TENSORRT_RANGE
    from optimize.runtimes.trt_profile import profile_shapes

    return {
        "parser_checked": TENSORRT_VERSION,
        "tensorrt_supported": TENSORRT_RANGE,
        "build": "strongly typed: model.onnx's own types decide each layer's precision (no precision flags)",
        "profile": profile_shapes(list(input_names), engine),
        "workspace_mib": engine.workspace_mib,
        "engine": None,
    }


def engine_tolerances(manifest: dict[str, Any]) -> Tolerances:
    """The tolerances the engine is held to against ONNX Runtime: the ones the bundle's export parity
    was judged by (the target's, with the user's --min-cosine for int8). A pruned bundle's recorded
    tolerances are loosened for the cut, which the engine does not add to: it gets the target's own."""
    recorded = (manifest.get("parity") or {}).get("tolerances")
    names = {f.name for f in dataclasses.fields(Tolerances)}
    if isinstance(recorded, dict) and not manifest.get("pruning") and names <= set(recorded):
        return Tolerances(**{name: recorded[name] for name in names})
    target = get_target(str(manifest.get("target")))
    return target.tolerances(str(manifest.get("task", "feature-extraction")), ExportJob(model="", target=target.name, output=Path(".")))


def build_engine_into(folder: Path, manifest: dict[str, Any], batches: list[Feeds], engine: EngineConfig) -> dict[str, Any]:
    """Build engine.plan in ``folder`` (timing cache beside it) and check it against ONNX Runtime.

    The comparison batches are cut to the profile's maximum batch and sequence and padded up to
    its minimum (trt_profile), and judged like export parity, within the target's tolerances."""
    from optimize.runtimes.ort import OrtRunner
    from optimize.runtimes.tensorrt import TrtRunner, build_engine, compare_with_onnxruntime, device_here, info_dict
    from optimize.runtimes.trt_profile import ProfileFit, cut_to_profile

    inputs = [i["name"] for i in manifest["io"]["inputs"]]
    outputs = [o["name"] for o in manifest["io"]["outputs"]]
    model_path = folder / bundles.MODEL_FILE
    data, info = build_engine(model_path, manifest["precision"], engine, inputs, folder / bundles.TIMING_CACHE_FILE, device_here())
    (folder / bundles.ENGINE_FILE).write_bytes(data)
    recorded_session = manifest.get("session") or {}
    session = SessionConfig(
        optimization_level=recorded_session.get("optimization_level", "all"),
        disabled_optimizers=tuple(recorded_session.get("disabled_optimizers", ())),
    )
    candidate = ProfileFit(TrtRunner(data, tuple(inputs), tuple(outputs)), engine, pad_id=_pad_token_id(folder))
    try:
        check = compare_with_onnxruntime(
            OrtRunner(model_path, session),
            candidate,
            cut_to_profile(batches, engine),
            task=str(manifest.get("task", "feature-extraction")),
            output=outputs[0],
            tolerances=engine_tolerances(manifest),
        )
    finally:
        candidate.deactivate()
    if not check.ok:
        raise ParityError(
            f"the TensorRT engine is out of {manifest.get('target')} tolerance against ONNX Runtime: "
            f"{'; '.join(check.parity.failures)} (engine not kept)",
            "rebuild with another TensorRT release in the supported range, or report the model",
        )
    return {**info_dict(info), "ort_comparison": check.as_dict()}


def _pad_token_id(folder: Path) -> int:
    """The id the tokenizer pads with (config.json), for comparison batches padded up to the profile."""
    try:
        value = json.loads((folder / "config.json").read_text()).get("pad_token_id")
    except (OSError, ValueError):
        value = None
    return int(value) if isinstance(value, int) else 0


def int8_plan(stats: dict[str, Any]) -> str:
    """What an int8 pass settled on, in a few words ("" for any other pass): a parity failure
    names it, since no manifest is written to read it from."""
    if "int8_layers" not in stats or "fp32_layers" not in stats:
        return ""
    sites = f", {stats['int8_sites']} of {stats['activation_sites']} fusion sites" if stats.get("activation_sites") else ""
    return f"int8 on {stats['int8_layers']} of {stats['int8_layers'] + stats['fp32_layers']} linear layers{sites}"


def build_bundle(path: Path, overrides: "EngineOverrides | None" = None, reporter: Reporter | None = None) -> dict[str, Any]:  # noqa: F821
    """`optimize build`: add engine.plan to a TensorRT bundle, on the machine that will run it.

    The profile and workspace start from what the manifest records; each of ``overrides``
    (--batch, --seq-len, --workspace) replaces only its own part."""
    import copy
    import shutil

    from optimize.config import EngineOverrides, ParityConfig
    from optimize.runtimes.tensorrt import device_here, require
    from optimize.runtimes.timing_cache import carried_files, foreign
    from optimize.runtimes.trt_profile import profile_shapes, recorded_engine
    from optimize.untrusted import load_untrusted

    reporter = reporter or SilentReporter()
    bundle = bundles.read_bundle(path)
    if bundle.manifest.get("runtime") != "tensorrt":
        raise InputError(
            f"bundle {path} is for target {bundle.target}, not a TensorRT target",
            "export with --target trt-fp16 or --target trt-int8 to get a bundle `optimize build` can build",
        )
    engine = (overrides or EngineOverrides()).applied_to(recorded_engine(bundle.manifest))
    check_engine_config(engine, bundle.manifest)
    load_untrusted(bundle.model_path)  # never hand an unchecked file to a parser
    require()
    cache_note = None
    if (bundle.path / bundles.TIMING_CACHE_FILE).is_file():
        cache_note = foreign((bundle.manifest["tensorrt"].get("engine") or {}).get("device"), device_here())
        if cache_note:
            reporter.note(cache_note)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle.path)
    inputs = tuple(i["name"] for i in bundle.manifest["io"]["inputs"])
    # as many held-out texts as export parity takes: with 64, a single top-1 neighbour flip (1/64) would miss fp16's 0.99
    parity = ParityConfig()
    texts = by_length(tokenizer, list(dict.fromkeys(parity_texts(None, parity.size))), engine.sequence.maximum)
    batches = list(token_batches(tokenizer, texts, inputs, batch_size=parity.batch_size, seq_len=engine.sequence.maximum))
    manifest = copy.deepcopy(bundle.manifest)
    with bundles.staged(path, True) as staging:
        for item in carried_files(bundle.path, keep_timing_cache=cache_note is None):
            shutil.copy2(item, staging / item.name)
        reporter.phase("building the TensorRT engine")
        manifest["tensorrt"]["profile"] = profile_shapes(list(inputs), engine)
        manifest["tensorrt"]["workspace_mib"] = engine.workspace_mib
        manifest["tensorrt"]["engine"] = build_engine_into(staging, manifest, batches, engine)
        if cache_note:
            manifest["tensorrt"]["engine"]["timing_cache_note"] = cache_note
        manifest["tensorrt"].pop("engine_note", None)
        manifest["hardware_engine"] = fingerprint()
        manifest = {k: v for k, v in manifest.items() if k not in ("format", "files")}
        bundles.write_manifest(staging, manifest)
    return json.loads((path / bundles.MANIFEST_FILE).read_text())


def check_engine_config(engine: EngineConfig, manifest: dict[str, Any]) -> None:
    """Refuse, before any GPU work, a profile the model cannot take or a workspace of nothing."""
    positions = int((manifest.get("source") or {}).get("max_sequence") or 0)
    if positions and engine.sequence.maximum > positions:
        raise InputError(
            f"--seq-len maximum {engine.sequence.maximum} is longer than the model allows ({positions} positions)",
            f"pass a --seq-len whose maximum is {positions} or less",
        )
    if engine.workspace_mib < 1:
        raise InputError(f"--workspace must be at least 1 MiB, got {engine.workspace_mib}", "pass e.g. --workspace 4096")
