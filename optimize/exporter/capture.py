"""PyTorch module -> ONNX graph, through capture strategies tried in order.

Like torch.onnx's own ``_capture_strategies``: each strategy returns an attempt (ok or the
reason it failed) instead of raising, so a failed export says what was tried and why each
way failed. ``torch.export`` (dynamo) comes first; the TorchScript exporter is the fallback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx_ir as ir

from optimize.errors import interrupt_behind

from optimize.config import ExportConfig
from optimize.exporter.resolve import LoadedModel


@dataclass(frozen=True)
class CaptureAttempt:
    strategy: str
    ok: bool
    seconds: float
    reason: str = ""


def _export_wrapper(loaded: LoadedModel):  # -> torch.nn.Module
    """A module whose forward takes exactly the artifact's inputs and returns its outputs in order."""
    import torch

    class ExportWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = loaded.module
            self.names = loaded.input_names
            self.outputs = loaded.outputs

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):  # noqa: ANN001
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            kwargs = {name: given[name] for name in self.names}
            result = self.model(**kwargs, return_dict=True)
            if len(self.outputs) == 1:
                return result[self.outputs[0]]
            return tuple(result[name] for name in self.outputs)

    return ExportWrapper().eval()


def sample_inputs(loaded: LoadedModel, batch: int = 2, seq_len: int = 16) -> dict:
    """Tokenized example text, padded, as int64 torch tensors in the artifact's input order.

    Batch 2 and sequence 16 keep torch.export from specialising a dimension to 1.
    """
    texts = ["Deployment compilers turn models into artifacts.", "Short text."] * batch
    encoded = loaded.tokenizer(
        texts[:batch], padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return {name: encoded[name].long() for name in loaded.input_names}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx prints progress and warnings of its own; the CLI has its own progress bars."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _capture_dynamo(loaded: LoadedModel, cfg: ExportConfig) -> ir.Model:
    import torch

    wrapper = _export_wrapper(loaded)
    inputs = sample_inputs(loaded)
    batch = torch.export.Dim("batch", min=1, max=65536)
    sequence = torch.export.Dim("sequence", min=1, max=loaded.max_sequence)
    dynamic = {name: {0: batch, 1: sequence} for name in loaded.input_names}
    with _quiet():
        program = torch.onnx.export(
            wrapper,
            (),
            kwargs=inputs,
            dynamo=True,
            opset_version=cfg.opset,
            dynamic_shapes=dynamic,
            input_names=list(loaded.input_names),
            output_names=list(loaded.outputs),
            optimize=True,
            verbose=False,
        )
    return program.model


def _capture_torchscript(loaded: LoadedModel, cfg: ExportConfig) -> ir.Model:
    import onnx
    import torch

    wrapper = _export_wrapper(loaded)
    inputs = sample_inputs(loaded)
    buffer = io.BytesIO()
    axes = {name: {0: "batch", 1: "sequence"} for name in loaded.input_names}
    from optimize.tasks import get_task

    for name, names in zip(loaded.outputs, get_task(loaded.task).axes):
        axes[name] = {i: axis for i, axis in enumerate(names) if axis in ("batch", "sequence")}
    with _quiet():
        torch.onnx.export(
            wrapper,
            tuple(inputs[n] for n in loaded.input_names),
            buffer,
            dynamo=False,
            opset_version=cfg.opset,
            input_names=list(loaded.input_names),
            output_names=list(loaded.outputs),
            dynamic_axes=axes,
        )
    return ir.from_proto(onnx.load_from_string(buffer.getvalue()))


STRATEGIES: dict[str, Callable[[LoadedModel, ExportConfig], ir.Model]] = {
    "dynamo": _capture_dynamo,
    "torchscript": _capture_torchscript,
}


def attempt(name: str, loaded: LoadedModel, cfg: ExportConfig) -> tuple[ir.Model | None, CaptureAttempt]:
    """Run one strategy; a failure is returned as an attempt with its reason, never raised."""
    import torch

    started = time.perf_counter()
    try:
        with torch.no_grad():
            model = STRATEGIES[name](loaded, cfg)
    except Exception as exc:  # noqa: BLE001 - a failed strategy is a result, not a crash
        interrupted = interrupt_behind(exc)
        if interrupted is not None:  # SIGTERM mid-capture: stop, do not fall back
            raise interrupted from None
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        reason = f"{exc.__class__.__name__}: {' '.join(first_line.split())[:300]}"
        return None, CaptureAttempt(name, False, time.perf_counter() - started, reason)
    return model, CaptureAttempt(name, True, time.perf_counter() - started)
