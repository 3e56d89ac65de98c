"""The ``optimize`` command: parses flags into config objects, calls the API, maps errors to exits.

Every error is one line on stderr, ``error: <problem>; <fix>``, and an exit code from
``optimize.errors.EXIT_CODES``. Set OPTIMIZE_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

# typer 0.29+ vendors its own click: catch the exceptions of the click it actually runs on
# (its Exit and Abort moved to typer.exceptions; older typer used click's own).
try:
    from typer import _click as click
except ImportError:  # older typer drives the click package
    import click  # type: ignore[no-redef]
_EXIT = getattr(click.exceptions, "Exit", typer.Exit)
_ABORT = getattr(click.exceptions, "Abort", typer.Abort)
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from optimize.errors import EXIT_CODES, INTERRUPTED, TERMINATED, InputError, Interrupted, OptimizeError, Terminated
from optimize.launch import MODEL_LIBRARIES, PREFLIGHT_LIBRARIES, RUNTIME_LIBRARIES, native_imports

app = typer.Typer(
    name="optimize",
    help="Compile BERT-class models to parity-checked ONNX Runtime and TensorRT artifacts.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped or captured: tables keep their columns instead of folding at 80
    out = Console(highlight=False, soft_wrap=True, width=160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class RichReporter:
    """Phases on a spinner line (stderr); notes and warnings printed above it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def phase(self, name: str) -> None:
        self.progress.update(self.task, description=name)

    def note(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def warn(self, line: str) -> None:
        self.progress.console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="`bert` (the embedded default), a local Hugging Face folder, or a cached hub id.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target to compile for; see `optimize targets`.")] = "ort-fp32",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Bundle folder to write.")] = None,
    task: Annotated[Optional[str], typer.Option(help="feature-extraction, sentence-embedding, text-classification, token-classification or question-answering (default: from the checkpoint's head).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset of the export.")] = 18,
    seq_len: Annotated[str, typer.Option("--seq-len", help="Longest sequence to validate, calibrate and time at; TensorRT profiles take MIN,OPT,MAX.")] = "128",
    batch: Annotated[str, typer.Option("--batch", help="TensorRT profile batch sizes MIN,OPT,MAX (or one size).")] = "1,1,32",
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration text: one text per line, or a CSV/TSV/JSON-lines file with a text column (default: the built-in corpus of four domains); a fifth of a file of 50+ texts is held out for parity.")] = None,
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="Calibration texts to use.")] = 512,
    text_column: Annotated[str, typer.Option("--text-column", help="The column of texts where --calibration, --parity-text or --eval-data is a CSV, TSV or JSON-lines file.")] = "text",
    calibration_method: Annotated[str, typer.Option("--calibration-method", help="INT8 activation ranges: minmax, percentile or entropy.")] = "minmax",
    min_cosine: Annotated[float, typer.Option("--min-cosine", help="INT8 accuracy budget: mean cosine against fp32 to keep (held-out text).")] = 0.99,
    min_cosine_floor: Annotated[float, typer.Option("--min-cosine-floor", help="INT8 budget: the worst text's cosine to keep.")] = 0.97,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="INT8 budget: top-1 neighbour (or label) agreement to keep.")] = 0.95,
    smooth_alpha: Annotated[float, typer.Option("--smooth-alpha", help="SmoothQuant migration strength in [0, 1]; 0 turns migration off.")] = 0.5,
    keep_fp32: Annotated[str, typer.Option("--keep-fp32", help="Comma-separated layers to keep fp32, as labelled by `inspect` (L0.ffn_out).")] = "",
    qat: Annotated[int, typer.Option("--qat", help="int8 targets: quantization-aware distillation steps against the fp32 model before export (every linear layer trained for int8; about 1 s a step on 2 cores).")] = 0,
    half: Annotated[str, typer.Option("--half", help="fp16 targets: float16, or bfloat16 where the runtime has bf16 kernels.")] = "float16",
    prune: Annotated[Optional[float], typer.Option("--prune", help="Remove this fraction (0-1) of the encoder parameters: the weights and biases of Q, K, V, attention output and both FFN linears of every layer (embeddings, LayerNorms, pooler and head not counted), as whole attention heads and FFN neurons.")] = None,
    prune_what: Annotated[str, typer.Option("--prune-what", help="What --prune may remove: both, heads or ffn.")] = "both",
    drop_layers: Annotated[int, typer.Option("--drop-layers", help="Remove this many whole encoder layers first, the ones the model misses least on calibration text (then --prune cuts the rest).")] = 0,
    recover: Annotated[int, typer.Option("--recover", help="Distillation steps against the unpruned model after pruning (0: none).")] = 0,
    train_device: Annotated[str, typer.Option("--train-device", help="Where --recover and --qat train: auto (a CUDA GPU if PyTorch sees one, else the CPU), cpu, cuda or cuda:N.")] = "auto",
    prune_min_cosine: Annotated[float, typer.Option("--prune-min-cosine", help="With --prune: mean cosine against the unpruned model to keep.")] = 0.95,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Classifiers: labelled rows (CSV, TSV, JSON lines) the artifact is judged on against its source model; rows that are also calibration text are left out.")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="The column of labels in --eval-data.")] = "label",
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="With --eval-data: accuracy points the artifact may lose; more is exit 6, no bundle.")] = 1.0,
    prune_min_agreement: Annotated[Optional[float], typer.Option("--prune-min-agreement", help="With --prune: top-1 neighbour or label agreement with the unpruned model to keep on parity text (default 0.80 neighbours, 0.90 labels).")] = None,
    parity_text: Annotated[Optional[Path], typer.Option("--parity-text", help="Held-out text for parity, one per line (default: the held-out fifth of --calibration, or of the built-in corpus).")] = None,
    parity_size: Annotated[int, typer.Option("--parity-size", help="Held-out texts to compare on.")] = 256,
    unseen_size: Annotated[int, typer.Option("--unseen-size", help="Texts of a domain no calibration source holds (movie reviews) to compare on too; 0: none.")] = 600,
    threads: Annotated[int, typer.Option(help="Threads for the speed line (ONNX Runtime and PyTorch alike).")] = 2,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Time the artifact side by side with PyTorch.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --output.")] = False,
    packed_attention: Annotated[bool, typer.Option("--packed-attention/--fused-attention", help="ort-* targets: attention's Q/K/V projection and the attention itself on real tokens only, each sentence on ONNX Runtime's flash kernel, or ONNX Runtime's fused Attention on the padded layout (as fast one text at a time; batches of 8 and 32 real sentences 1.3-1.5x slower).")] = True,
    with_tokenizer: Annotated[bool, typer.Option("--with-tokenizer", help="Put the tokenizer into model.onnx (onnxruntime-extensions ops): the graph takes a string tensor `text` [batch]; ort-* targets, WordPiece tokenizers.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for anything random (a new classification head).")] = 0,
) -> None:
    """Export MODEL, run the target's passes, check parity against PyTorch, write a bundle."""
    # PyTorch and transformers take seconds to import: every flag, the output folder and the
    # model's path are checked first, so a typo is answered in half a second
    # (--with-tokenizer's check imports onnxruntime-extensions, which loads PyTorch itself: guarded too)
    native_imports(MODEL_LIBRARIES if with_tokenizer else PREFLIGHT_LIBRARIES)
    from optimize.api import export_model, export_preflight
    from optimize.config import (
        CalibrationConfig,
        EngineConfig,
        EvaluationConfig,
        ExportConfig,
        ExportJob,
        HalfConfig,
        ParityConfig,
        PruneConfig,
        QuantConfig,
        SpeedCheckConfig,
        TrainingConfig,
    )

    if output is None:
        raise InputError("no output folder given", "pass --output DIR")
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}", "pass --threads 2, say")
    sequence = _shape_range(seq_len, "--seq-len", lowest_default=1)
    batches = _shape_range(batch, "--batch", lowest_default=None)
    seq_len_max = sequence.maximum
    if seq_len_max < 8:
        raise InputError(f"--seq-len must be at least 8, got {seq_len_max}", "pass --seq-len 128, say")
    from optimize.calibration.ranges import METHODS

    if calibration_method not in METHODS:
        raise InputError(f"unknown calibration method {calibration_method!r}", f"choose one of: {', '.join(METHODS)}")
    for flag, value in (("--min-cosine", min_cosine), ("--min-cosine-floor", min_cosine_floor), ("--min-agreement", min_agreement)):
        if not 0.0 < value <= 1.0:
            raise InputError(f"{flag} must be in (0, 1], got {value}", f"pass e.g. {flag} 0.99")
    if not 0.0 <= smooth_alpha <= 1.0:
        raise InputError(f"--smooth-alpha must be in [0, 1], got {smooth_alpha}", "pass e.g. --smooth-alpha 0.5, or 0 to turn migration off")
    if max_accuracy_drop < 0:
        raise InputError(f"--max-accuracy-drop is in accuracy points and cannot be negative, got {max_accuracy_drop}", "pass e.g. --max-accuracy-drop 1.0")
    if eval_data is not None:  # read up front: a bad file is refused before minutes of work
        from optimize.textdata import read_rows

        read_rows(eval_data, text_column=text_column, label_column=label_column, flag="--eval-data")
    if qat < 0:
        raise InputError(f"--qat takes a number of training steps, got {qat}", "pass e.g. --qat 600")
    if unseen_size < 0:
        raise InputError(f"--unseen-size must be 0 or more, got {unseen_size}", "pass e.g. --unseen-size 600, or 0 to skip that text")
    if calibration_size < 1:
        raise InputError(f"--calibration-size must be at least 1, got {calibration_size}", "pass e.g. --calibration-size 512")
    if calibration is not None:  # validated up front even where the target does not calibrate
        from optimize.calibration.corpus import calibration_texts

        calibration_texts(calibration, 1, text_column)
    if prune is not None and not 0.0 < prune < 1.0:
        raise InputError(f"--prune takes a fraction between 0 and 1 (exclusive), got {prune}", "pass e.g. --prune 0.3")
    if prune_what not in ("both", "heads", "ffn"):
        raise InputError(f"--prune-what must be both, heads or ffn, got {prune_what!r}", "pass --prune-what both")
    if drop_layers < 0:
        raise InputError(f"--drop-layers takes a number of layers, got {drop_layers}", "pass e.g. --drop-layers 2")
    if recover < 0 or (recover and prune is None and not drop_layers):
        raise InputError(f"--recover {recover} needs --prune or --drop-layers and a non-negative step count", "pass e.g. --prune 0.3 --recover 300")
    if prune_min_agreement is not None and not 0.0 <= prune_min_agreement <= 1.0:
        raise InputError(f"--prune-min-agreement must be in [0, 1], got {prune_min_agreement}", "pass e.g. --prune-min-agreement 0.8")
    if not 0.0 < prune_min_cosine <= 1.0:
        raise InputError(f"--prune-min-cosine must be in (0, 1], got {prune_min_cosine}", "pass e.g. --prune-min-cosine 0.95")
    job = ExportJob(
        model=model,
        target=target,
        output=output,
        force=force,
        export=ExportConfig(task=task or "", opset=opset, seq_len=seq_len_max, with_tokenizer=with_tokenizer, packed_attention=packed_attention),
        calibration=CalibrationConfig(path=calibration, size=calibration_size, seq_len=seq_len_max, text_column=text_column),
        parity=ParityConfig(path=parity_text, size=parity_size, unseen_size=unseen_size, seq_len=seq_len_max),
        speed=SpeedCheckConfig(enabled=speed, threads=threads, seq_len=min(128, seq_len_max)),
        engine=EngineConfig(batch=batches, sequence=sequence),
        quant=QuantConfig(
            method=calibration_method,
            min_cosine=min_cosine,
            min_cosine_floor=min_cosine_floor,
            min_agreement=min_agreement,
            smooth_alpha=smooth_alpha or None,
            keep_fp32=tuple(x.strip() for x in keep_fp32.split(",") if x.strip()),
            qat_steps=qat,
        ),
        half=HalfConfig(dtype=half),
        evaluation=EvaluationConfig(path=eval_data, text_column=text_column, label_column=label_column, max_accuracy_drop=max_accuracy_drop),
        prune=PruneConfig(
            fraction=prune or 0.0, what=prune_what, drop_layers=drop_layers, recover_steps=recover, min_cosine=prune_min_cosine,
            **({"min_agreement": prune_min_agreement, "min_label_agreement": prune_min_agreement} if prune_min_agreement is not None else {}),
        ),
        training=TrainingConfig(device=train_device),
        seed=seed,
    )
    export_preflight(job)
    native_imports(MODEL_LIBRARIES)
    with _progress() as progress:
        outcome = export_model(job, RichReporter(progress))
    manifest = outcome.manifest
    files = manifest["files"]
    from optimize.inspection import pass_summary

    passes = " -> ".join(pass_summary(p) for p in manifest["passes"]["passes"])
    probes = " ".join(f"({p['batch']},{p['sequence']})" for p in manifest["export"]["dynamic_probes"])
    out.print(f"export: {manifest['export']['strategy']}, opset {manifest['export']['opset']}, dynamic axes proven at {probes}")
    out.print(f"passes: {passes}")
    from optimize.passes.fusion import fusion_line

    for record in manifest["passes"]["passes"]:
        if record["name"] == "ort-fusion":
            out.print(f"fusions: {fusion_line(record.get('stats', {}))}", markup=False)
    out.print(f"parity: {outcome.parity.summary()}: within {outcome.target} tolerance")
    if outcome.unseen:
        out.print(f"parity: {outcome.unseen.summary()}: within {outcome.target} tolerance")
    if not manifest["source"].get("tested_architecture", True):
        from optimize.api import generic_path_line

        out.print(f"architecture: {generic_path_line(manifest['source']['model_type'])}", markup=False)
    if outcome.speed:
        out.print(f"speed: {outcome.speed.summary()}")
    sizes = ", ".join(f"{name} {_mb(entry['bytes'])}" for name, entry in files.items() if name.startswith("model"))
    out.print(f"bundle: {outcome.output} ({sizes}, tokenizer, manifest.json)")
    trt = manifest.get("tensorrt")
    if trt:
        engine = trt.get("engine")
        if engine:
            out.print(f"engine: engine.plan built with TensorRT {engine['tensorrt']} in {engine['build_seconds']:.0f} s; matches ONNX Runtime")
        else:
            out.print(trt.get("engine_note", "engine not built"), markup=False)


def _shape_range(text: str, flag: str, lowest_default: int | None):  # -> ShapeRange
    """'128' -> (lowest, 128, 128); 'a,b,c' -> (a, b, c)."""
    from optimize.config import ShapeRange

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
        if len(values) == 1:
            low = values[0] if lowest_default is None else lowest_default
            return ShapeRange(min(low, values[0]), values[0], values[0])
        if len(values) == 3:
            return ShapeRange(*values)
    except ValueError:
        pass
    raise InputError(f"{flag} takes N or MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}", f"pass e.g. {flag} 1,8,32")


@app.command()
def build(
    bundle: Annotated[Path, typer.Argument(help="A trt-fp16 or trt-int8 bundle folder.")],
    batch: Annotated[Optional[str], typer.Option("--batch", help="Profile batch MIN,OPT,MAX or N (default: as the manifest records).")] = None,
    seq_len: Annotated[Optional[str], typer.Option("--seq-len", help="Profile sequence MIN,OPT,MAX or N (default: as the manifest records).")] = None,
    workspace: Annotated[Optional[int], typer.Option(help="Builder workspace in MiB (default: as the manifest records, 4096 at export).")] = None,
) -> None:
    """Build the TensorRT engine of a bundle on this GPU (engine.plan, timing cache) and check it against ONNX Runtime."""
    overrides = build_overrides(batch, seq_len, workspace)
    native_imports(MODEL_LIBRARIES)
    from optimize.api import build_bundle

    with _progress() as progress:
        manifest = build_bundle(bundle, overrides, RichReporter(progress))
    info = manifest["tensorrt"]["engine"]
    low, _, high = next(iter(info["profile"].values()))
    out.print(
        f"engine: {bundle}/engine.plan ({info['engine_bytes'] / 1e6:.1f} MB, TensorRT {info['tensorrt']}, {info['build_seconds']:.0f} s; "
        f"profile batch {low[0]}-{high[0]}, sequence {low[1]}-{high[1]})",
        markup=False,
    )
    parity = info["ort_comparison"]["parity"]
    out.print(
        f"engine vs ONNX Runtime: cosine mean {parity['cosine_mean']:.6f} min {parity['cosine_min']:.6f} over "
        f"{parity['samples']} held-out texts, within {manifest['target']} tolerance",
        markup=False,
    )


def build_overrides(batch: str | None, seq_len: str | None, workspace: int | None):  # -> EngineOverrides
    """`optimize build`'s flags, each independent of the others; None keeps the manifest's value."""
    from optimize.config import EngineOverrides

    return EngineOverrides(
        batch=_shape_range(batch, "--batch", lowest_default=None) if batch else None,
        sequence=_shape_range(seq_len, "--seq-len", lowest_default=1) if seq_len else None,
        workspace_mib=workspace,
    )


@app.command()
def targets() -> None:
    """List the targets and whether each is available here."""
    from optimize.targets import TARGETS

    table = Table(show_edge=False, header_style="bold")
    for column in ("target", "runtime", "precision", "available", "what it does"):
        table.add_column(column)
    for target in TARGETS.values():
        reason = target.availability()
        table.add_row(target.name, target.runtime, target.precision, "yes" if reason is None else f"no: {reason}", target.summary)
    out.print(table)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle folder or an .onnx file.")],
) -> None:
    """Show what a bundle or an ONNX file holds: inputs, outputs, operators, sizes, parity."""
    native_imports(("numpy", "onnx"))
    from optimize.inspection import describe

    for line in describe(path):
        out.print(line, markup=False)


@app.command(name="eval")
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A text-classification bundle (ort-* target).")],
    data: Annotated[Path, typer.Option("--data", help="Labelled rows: CSV, TSV or JSON lines.")],
    text_column: Annotated[str, typer.Option("--text-column", help="Column of texts.")] = "text",
    label_column: Annotated[str, typer.Option("--label-column", help="Column of labels (names or ids of the model's labels).")] = "label",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON here, and the confusion matrices as a PNG beside it.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per batch.")] = 32,
) -> None:
    """The bundle and the PyTorch model it came from on labelled rows: both classification reports, agreement, the accuracy lost."""
    native_imports(MODEL_LIBRARIES)
    from optimize.evaluation import confusion_png, evaluate as run_eval
    from optimize.textdata import read_rows

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}", "pass e.g. --batch-size 32")
    rows = read_rows(data, text_column=text_column, label_column=label_column, flag="--data")
    with _progress() as progress:
        RichReporter(progress).phase(f"running the artifact and its source model on {len(rows.texts)} rows")
        report = run_eval(bundle, rows, batch_size=batch_size)
    _print_eval(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        png = json_out.with_suffix(".png")
        confusion_png(report, png)
        out.print(f"report: {json_out}, confusion matrices: {png}")


def _print_eval(report) -> None:  # noqa: ANN001
    table = Table(show_edge=False, header_style="bold", title=f"{report.rows} rows")
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="right" if column != "label" else "left")
    pair = lambda a, b: f"{a:.4f} / {b:.4f}"  # noqa: E731
    for name in report.labels:
        s, a = report.source.classes[name], report.artifact.classes[name]
        table.add_row(name, pair(s.precision, a.precision), pair(s.recall, a.recall), pair(s.f1, a.f1), str(s.support))
    table.add_row("accuracy", "", "", pair(report.source.accuracy, report.artifact.accuracy), str(report.rows))
    table.add_row("macro avg", "", "", pair(report.source.macro_f1, report.artifact.macro_f1), str(report.rows))
    table.add_row("weighted avg", "", "", pair(report.source.weighted_f1, report.artifact.weighted_f1), str(report.rows))
    out.print("classification report, source PyTorch model / artifact:")
    out.print(table)
    for title, model in (("source", report.source), ("artifact", report.artifact)):
        matrix = "; ".join(f"{name}: {row}" for name, row in zip(report.labels, model.confusion))
        out.print(f"confusion ({title}, rows true, columns predicted): {matrix}", markup=False)
    low, high = report.drop_interval
    out.print(
        f"agreement {report.agreement:.4f}; accuracy {report.source.accuracy:.4f} -> {report.artifact.accuracy:.4f}: "
        f"{report.accuracy_drop:+.2f} points lost (95% bootstrap interval {low:+.2f} to {high:+.2f})"
    )
    for note in report.notes:
        out.print(f"note: {note}", markup=False)


@app.command(name="run")
def run_bundle(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `optimize export`.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to run (question answering: {\"question\": ..., \"context\": ...} as JSON); none: --file, or standard input, one per line.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Texts: one per line, or a CSV/TSV/JSON-lines file with a text column (question answering: question and context columns).")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="The column of texts where --file is a CSV, TSV or JSON-lines file.")] = "text",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs per batch (sorted by length, each batch padded to its longest).")] = 32,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0: one per physical core).")] = 0,
) -> None:
    """Run a bundle on texts and print one JSON line per input: an embedding, a label and score, entities, or an answer."""
    native_imports(RUNTIME_LIBRARIES)
    from optimize.inference import load
    from optimize.runinput import run_inputs

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}", "pass e.g. --batch-size 32")
    if texts and file is not None:
        raise InputError("texts given both as arguments and with --file", "pass one of them")
    model = load(bundle, threads=threads, progress=err.is_terminal)
    inputs = run_inputs(model.task, texts, file, text_column)
    for item, result in zip(inputs, model.predict(inputs, batch_size=batch_size)):
        record = {"input": item, **result} if not isinstance(item, str) else {"text": item, **result}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if "" in parts:  # "1,,2" or "8,": a value was lost on the way, not meant to be skipped
        raise InputError(f"{flag} has an empty entry in {text!r}", f"pass e.g. {flag} 1,8,32")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, got {text!r}", f"pass e.g. {flag} 1,8,32") from None
    if not values or any(v < 1 for v in values):
        raise InputError(f"{flag} values must be positive integers, got {text!r}", f"pass e.g. {flag} 1,8,32")
    return values


@app.command()
def bench(
    bundles: Annotated[Optional[list[Path]], typer.Argument(help="Bundle folders to time side by side.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    seq: Annotated[str, typer.Option("--seq", help="Sequence lengths, comma-separated.")] = "128",
    threads: Annotated[int, typer.Option(help="Threads per engine (0: one per physical core).")] = 0,
    baseline: Annotated[str, typer.Option(help="Baselines: torch, ort-default, or none.")] = "torch",
    real_length: Annotated[bool, typer.Option("--real-length", help="Real sentences at natural length, padded only to the longest in each batch.")] = False,
    rounds: Annotated[int, typer.Option(help="Rounds of alternating blocks.")] = 7,
    block_runs: Annotated[int, typer.Option("--block-runs", help="Runs per block (the first 3 are dropped).")] = 12,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for bench.json, bench.md and bench.png.")] = Path("bench-out"),
    merge_files: Annotated[Optional[list[Path]], typer.Option("--merge", help="Merge result JSONs from several machines into one table.")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="With --each-node: the Ray cluster to benchmark on.")] = None,
    each_node: Annotated[bool, typer.Option("--each-node", help="Run the benchmark once on every node of the --address cluster and merge the tables (as --merge).")] = False,
    serve_urls: Annotated[Optional[list[str]], typer.Option("--serve", help="Load-test a running `optimize serve` endpoint (repeat to compare endpoints) instead of timing bundles in-process.")] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="With --serve: concurrent clients, comma-separated.")] = "1,8,32",
    duration: Annotated[float, typer.Option("--duration", help="With --serve: seconds of load per concurrency.")] = 30.0,
) -> None:
    """Time bundles against PyTorch and ONNX Runtime's defaults: p50/p90/p99, throughput, memory, size."""
    from optimize.bench import report

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file", "pass a folder for bench.json, bench.md and bench.png")
    if serve_urls:
        if bundles:  # the server's own bundle is what gets measured: a bundle named here would be ignored
            raise InputError(
                f"--serve load-tests a running server, so the bundle {bundles[0]} would not be used",
                "drop the bundle (the server's own is measured), or drop --serve to time the bundle in-process",
            )
        _bench_serve(serve_urls, concurrency, duration, batch, seq, real_length, out_dir)
        return
    if merge_files:
        results = [report.load_result(p) for p in [*merge_files, *(bundles or [])]]
        out.print(report.merge(results), markup=False)
        return
    from optimize.config import BenchConfig

    if rounds < 1 or block_runs < 4:
        raise InputError("--rounds must be at least 1 and --block-runs at least 4", "pass e.g. --rounds 7 --block-runs 12")
    cfg = BenchConfig(
        batches=_int_list(batch, "--batch"),
        seq_lens=_int_list(seq, "--seq"),
        threads=threads,
        baselines=tuple(b.strip() for b in baseline.split(",") if b.strip()),
        real_length=real_length,
        rounds=rounds,
        block_runs=block_runs,
    )
    native_imports(MODEL_LIBRARIES)  # after the flags' checks (seconds); nothing is written before the timing starts
    from optimize.bench.run import run_bench

    if each_node or address:
        _bench_each_node(list(bundles or []), cfg, address, each_node, out_dir)
        return
    cells = len(cfg.batches) * len(cfg.seq_lens)
    written: dict[str, Path] = {}
    partial: dict = {}

    def save(result) -> None:  # noqa: ANN001 - after every finished cell: an interrupted run keeps them
        partial["result"] = result.as_dict()
        written.update(report.write_all(partial["result"], out_dir))

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), *Progress.get_default_columns()[1:], console=err, transient=True, disable=not err.is_terminal)
    try:
        with progress:
            task = progress.add_task("benchmarking", total=cells * cfg.rounds)
            result = run_bench(list(bundles or []), cfg, on_cell=save, on_round=lambda _: progress.advance(task))
    except (KeyboardInterrupt, Interrupted):
        if partial:
            kept = len(partial["result"]["cells"])
            raise Interrupted(f"interrupted; {kept} finished measurements kept in {written['json']}") from None
        raise
    data = result.as_dict()
    written.update(report.write_all(data, out_dir))
    out.print(report.terminal_table(data))
    for note in data["notes"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"wrote {written['json']}, {written['markdown']}, {written['png']}", markup=False)


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{flag} takes comma-separated numbers, got {text!r}", f"pass e.g. {flag} 0,0.1,0.3") from None


@app.command()
def tune(
    model: Annotated[str, typer.Argument(help="`bert` (the embedded default), a local Hugging Face folder, or a cached hub id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for trials.jsonl, frontier.md/png and best/ (the chosen bundle); run again to resume.")],
    targets: Annotated[str, typer.Option("--targets", help="Targets to search, comma-separated (ort-int8, ort-fp32, ort-fp16).")] = "ort-int8,ort-fp32",
    goal: Annotated[Optional[str], typer.Option("--goal", help="What the artifact must keep against the PyTorch model: cosine>=X[,agreement>=Y] (default cosine>=0.99).")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Classifiers: judge each trial on these labelled rows instead (CSV, TSV, JSON lines).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="With --eval-data: accuracy points a trial may lose.")] = 1.0,
    text_column: Annotated[str, typer.Option("--text-column", help="The column of texts in --eval-data.")] = "text",
    label_column: Annotated[str, typer.Option("--label-column", help="The column of labels in --eval-data.")] = "label",
    task: Annotated[Optional[str], typer.Option(help="The task (default: from the checkpoint's head).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="latency (speed ratio at --batch), throughput (the same at a larger batch, default 8) or size.")] = "latency",
    prune: Annotated[str, typer.Option("--prune", help="Pruning fractions to search, comma-separated (0: no cut).")] = "0,0.1,0.2,0.3",
    recover: Annotated[str, typer.Option("--recover", help="Recovery steps to search for cut candidates, comma-separated.")] = "0,400",
    train_device: Annotated[str, typer.Option("--train-device", help="Where trials with recovery train: auto (a CUDA GPU if the node's PyTorch sees one, else the CPU), cpu, cuda or cuda:N.")] = "auto",
    trials: Annotated[Optional[int], typer.Option("--trials", help="Start at most this many new trials in this run.")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="Minutes: no trial starts that is expected to end past this (0: no limit).")] = 40.0,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Batch every trial is timed at (default 1; 8 with --objective throughput).")] = None,
    seq: Annotated[int, typer.Option("--seq", help="Sequence length every trial is timed at.")] = 128,
    threads: Annotated[int, typer.Option("--threads", help="Threads every trial is timed with (ONNX Runtime and PyTorch alike).")] = 2,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of alternating blocks per trial's timing.")] = 15,
    address: Annotated[Optional[str], typer.Option("--address", help="A Ray cluster to join (default: a local Ray runtime started here).")] = None,
    node_label: Annotated[Optional[list[str]], typer.Option("--node-label", help="KEY=VALUE: run trials (export and timing) only on nodes with this Ray label.")] = None,
    node_resource: Annotated[Optional[str], typer.Option("--node-resource", help="Run trials only on nodes that offer this Ray custom resource (the hardware asked for).")] = None,
    trial_cpus: Annotated[float, typer.Option("--trial-cpus", help="CPUs each node's trial worker asks Ray for.")] = 1.0,
    trial_memory: Annotated[Optional[float], typer.Option("--trial-memory", help="GiB of memory each trial worker asks Ray for.")] = None,
) -> None:
    """Search target x pruning x recovery x int8 budget for the fastest artifact that meets the goal."""
    from optimize.config import ExportConfig, ExportJob, TrainingConfig
    from optimize.exporter.resolve import locate
    from optimize.training import checked_name
    from optimize.targets import get_target
    from optimize.tune import ClusterConfig, TimingConfig, TuneConfig, parse_goal, tune as run_tune
    from optimize.tune.space import OBJECTIVES

    checked_name(train_device)  # whether the device is there is each node's question, at its first recovery
    if address is None:  # on a cluster the model's path need only exist on the nodes
        locate(model)  # a missing model is one line now, not an error recorded by every trial
    parsed_goal = parse_goal(goal, eval_data, max_accuracy_drop, text_column, label_column)
    if not 0 <= time_limit < math.inf:  # NaN too
        raise InputError(f"--time-limit must be 0 (no limit) or more minutes, got {time_limit}", "pass e.g. --time-limit 40")
    if eval_data is not None:
        from optimize.textdata import read_rows

        read_rows(eval_data, text_column=text_column, label_column=label_column, flag="--eval-data")
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}", f"choose one of: {', '.join(OBJECTIVES)}")
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    for name in names:
        get_target(name)  # an unknown name is an InputError that suggests the nearest one
    if not names:
        raise InputError("--targets is empty", "pass e.g. --targets ort-int8,ort-fp32")
    recovers = _float_list(recover, "--recover")
    if any(r != int(r) for r in recovers):
        raise InputError(f"--recover takes whole step counts, got {recover!r}", "pass e.g. --recover 0,400")
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be at least 1, got {trials}", "pass e.g. --trials 8")
    if threads < 1 or seq < 8 or rounds < 1 or (batch is not None and batch < 1):
        raise InputError("--threads, --batch and --rounds must be at least 1 and --seq at least 8", "pass e.g. --batch 1 --seq 128 --threads 2")
    labels = []
    for item in node_label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--node-label takes KEY=VALUE, got {item!r}", "pass e.g. --node-label accelerator=avx512")
        labels.append((key.strip(), value.strip()))
    if trial_cpus <= 0:
        raise InputError(f"--trial-cpus must be positive, got {trial_cpus}", "pass e.g. --trial-cpus 1")
    seq_len = max(128, seq)
    cfg = TuneConfig(
        base=ExportJob(
            model=model, target="ort-fp32", output=output, export=ExportConfig(task=task or "", seq_len=seq_len),
            training=TrainingConfig(device=train_device),
        ),
        output=output,
        goal=parsed_goal,
        objective=objective,
        targets=names,
        prunes=_float_list(prune, "--prune"),
        recovers=tuple(int(r) for r in recovers),
        trials=trials,
        time_limit_s=time_limit * 60.0 if time_limit > 0 else None,
        timing=TimingConfig(batch=batch or (8 if objective == "throughput" else 1), seq_len=seq, threads=threads, rounds=rounds),
        cluster=ClusterConfig(address=address, trial_cpus=trial_cpus, trial_memory_gb=trial_memory, node_labels=tuple(labels), node_resource=node_resource),
    )
    result = run_tune(cfg, _TuneReporter())
    for decision in result.skipped:
        out.print(f"{'not recorded' if decision.verdict == 'failed' else 'not tried'}: {decision.describe()}", markup=False)
    best = result.best
    if best is None:
        out.print(f"best: none of {len(result.records)} trials met the goal ({parsed_goal.describe()})", markup=False)
    else:
        from optimize.tune.space import Candidate

        out.print(
            f"best: {Candidate.from_dict(best['candidate']).label}: {best['speedup']:.2f}x PyTorch eager ({best['p50_ms']:.2f} ms at batch "
            f"{best['batch']}, sequence {best['seq_len']}, {best['threads']} threads), {best['size_bytes'] / 1e6:.1f} MB, accuracy figure "
            f"{best['figures']['accuracy']:.4f} -> {Path(output) / 'best'}",
            markup=False,
        )
    out.print(f"tune: {result.new_trials} new trials, {len(result.records)} in all, {result.seconds:.0f} s; wrote {result.frontier_md}, {result.frontier_png}", markup=False)


class _TuneReporter:
    def note(self, line: str) -> None:
        err.print(line, markup=False, highlight=False)


def _bench_each_node(bundles: list[Path], cfg, address: str | None, each_node: bool, out_dir: Path) -> None:  # noqa: ANN001
    """`bench --address A --each-node`: one result per node (bench-<node>.json) and the merged table."""
    from optimize.bench import report
    from optimize.bench.each_node import bench_each_node

    if not (each_node and address):
        raise InputError("--each-node and --address go together", "pass both: --address HOST:6379 --each-node")
    results = bench_each_node(bundles, cfg, address)
    for result in results:
        written = report.write_all(result, out_dir, stem=f"bench-{result['fingerprint']['ray_node'][:8]}")
        out.print(f"node {result['fingerprint']['ray_node'][:8]}: wrote {written['json']}", markup=False)
    out.print(report.merge(results), markup=False)
def _bench_serve(urls: list[str], concurrency: str, duration: float, batch: str, seq: str, real_length: bool, out_dir: Path) -> None:
    """`optimize bench --serve URL`: the load test of optimize/serving/loadtest.py, same reports."""
    from optimize.bench import report
    from optimize.serving.loadtest import LoadConfig, run_load

    cfg = LoadConfig(
        urls=tuple(urls),
        concurrency=_int_list(concurrency, "--concurrency"),
        duration_s=duration,
        texts_per_request=_int_list(batch, "--batch")[0],
        real_length=real_length,
        words=_int_list(seq, "--seq")[0],
    )
    written: dict[str, Path] = {}
    with _progress() as progress:
        progress.add_task(f"load-testing {', '.join(urls)}: {len(cfg.concurrency) * len(urls)} cells of {duration:g} s", total=None)
        data = run_load(cfg, on_cell=lambda partial: written.update(report.write_all(partial, out_dir)))
    written.update(report.write_all(data, out_dir))
    out.print(report.terminal_table(data))
    out.print(f"wrote {written['json']}, {written['markdown']}, {written['png']}", markup=False)


@app.command()
def serve(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders to serve: embedding bundles answer /v1/embeddings and /embed, classifiers /predict.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(help="Replicas per bundle.")] = 1,
    max_replicas: Annotated[Optional[int], typer.Option("--max-replicas", help="Autoscale each bundle between --replicas and this many replicas by load.")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Most texts the model runs at once.")] = 32,
    max_batch_tokens: Annotated[int, typer.Option("--max-batch-tokens", help="Most padded tokens (texts x longest) per batch.")] = 8192,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="How long a text waits for others to share its batch.")] = 5.0,
    max_padding: Annotated[float, typer.Option("--max-padding", help="Padding a batch may carry above its real tokens, as a share of them (texts of unlike length go to separate batches).")] = 0.25,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per replica (0: this machine's cores shared among the replicas).")] = 0,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Most texts one request may carry.")] = 512,
    address: Annotated[Optional[str], typer.Option("--address", help="A running Ray cluster to deploy onto (ray://host:10001 or host:6379); default: a local Ray started for this server.")] = None,
    ingress: Annotated[str, typer.Option("--ingress", help="What takes requests to the replicas: ray (Ray Serve's proxy) or haproxy (each replica answers HTTP itself behind Ray Serve's HAProxy; local runtime only; about twice the texts/s on 2 cores).")] = "ray",
) -> None:
    """Serve bundles over HTTP with dynamic batching, on Ray Serve; Ctrl-C drains and stops."""
    from optimize.serving.batching import BatchLimits
    from optimize.serving.config import ServeConfig
    from optimize.serving.deployment import serve_forever

    cfg = ServeConfig(
        host=host,
        port=port,
        replicas=replicas,
        max_replicas=max_replicas,
        batching=BatchLimits(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens, wait_ms=batch_wait_ms, max_padding=max_padding),
        threads=threads,
        max_texts=max_texts,
        address=address,
        ingress=ingress,
    )

    def note(line: str) -> None:
        err.print(line, markup=False, highlight=False)

    def ready(server) -> None:  # noqa: ANN001
        for route in server.routes:
            paths = ["/v1/embeddings", "/embed"] if route.task in ("feature-extraction", "sentence-embedding") else ["/predict"]
            out.print(f"serving {route.name} ({route.task}) at {route.url(cfg)}: POST {', '.join(paths)}; GET /health, /metrics, /info", markup=False)
        out.print("press Ctrl-C to stop", markup=False)

    serve_forever(list(bundles), cfg, note, ready)


_signals_received: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _signals_received.append(signum)
    raise Terminated(TERMINATED)


def _on_sigint(signum: int, frame: object) -> None:
    """Python's own Ctrl-C, remembered: a library can turn the KeyboardInterrupt into another
    error on its way out (a native module interrupted while it loads raises ImportError
    "initialization failed"), and the command must still say it was interrupted."""
    _signals_received.append(signum)
    raise KeyboardInterrupt


def _committed_bundles() -> list:
    """The bundles this process has put in place (none when optimize.bundle was never imported)."""
    bundle = sys.modules.get("optimize.bundle")
    return bundle.COMMITTED if bundle is not None else []


def _interrupt_line() -> str:
    """typer and click re-wrap an interrupt (Exit(130), Abort), so remember which signal it was."""
    committed = _committed_bundles()
    if committed:  # the signal came after the swap: the new bundle is whole, only what followed was cut
        what = "terminated by SIGTERM" if signal.SIGTERM in _signals_received else "interrupted"
        return f"error: {what} after {committed[-1]} was written (that bundle is complete; only what followed was cut short)"
    return f"error: {TERMINATED if signal.SIGTERM in _signals_received else INTERRUPTED}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _on_unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """An interrupt that lands inside a __del__ or a callback cannot propagate: Python would print
    "Exception ignored ... Traceback" and carry on. Deliver it again instead, at the next
    ordinary line, where it unwinds and rolls back as any interrupt does."""
    if isinstance(unraisable.exc_value, (Interrupted, KeyboardInterrupt)):
        again = signal.SIGTERM if isinstance(unraisable.exc_value, (Interrupted, Terminated)) else signal.SIGINT
        # from another thread, a moment later: sent from here it would land inside this hook
        # (or the same __del__) and be swallowed again
        timer = threading.Timer(0.05, os.kill, (os.getpid(), again))
        timer.daemon = True
        timer.start()
        return
    if os.environ.get("OPTIMIZE_DEBUG", "") not in ("", "0"):
        sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    _signals_received.clear()
    _committed_bundles().clear()
    signal.signal(signal.SIGTERM, _on_sigterm)
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is signal.default_int_handler:  # a Ctrl-C the parent ignores stays ignored
        signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _on_unraisable
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGINT, sigint)


def _main(argv: list[str] | None) -> int:
    debug = os.environ.get("OPTIMIZE_DEBUG", "") not in ("", "0")
    try:
        command = typer.main.get_command(app)  # inside the try: Ctrl-C lands here too (a tenth of a second)
        result = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="optimize", standalone_mode=False)
        code = int(result) if isinstance(result, int) else 0
        if code == 130:  # typer turns KeyboardInterrupt into Exit(130), which click returns silently
            err.print(_interrupt_line(), markup=False)
        return code
    except OptimizeError as exc:
        if debug:
            raise
        if _signals_received:  # whatever the interrupt became on its way out, it was an interrupt
            err.print(_interrupt_line(), markup=False)
            return 130
        err.print(f"error: {exc.one_line()}", markup=False, highlight=False)
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help() if exc.ctx else "run `optimize --help`", markup=False, highlight=False)
        return 2
    except click.exceptions.UsageError as exc:
        where = f"optimize {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.info_name != "optimize" else "optimize --help"
        message = _one_line(exc.format_message()).rstrip(".")  # click ends some messages with a full stop
        err.print(f"error: {message}; see `{where}`", markup=False, highlight=False)
        return 2
    except _EXIT as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except (KeyboardInterrupt, _ABORT):
        err.print(_interrupt_line(), markup=False)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if debug:
            raise
        if _signals_received:
            err.print(_interrupt_line(), markup=False)
            return 130
        err.print(
            f"internal error: {exc.__class__.__name__}: {_one_line(str(exc))[:300]}; re-run with OPTIMIZE_DEBUG=1 "
            "for the traceback and report it",
            markup=False,
            highlight=False,
        )
        return 1


def exit_codes_table() -> str:
    return "\n".join(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
