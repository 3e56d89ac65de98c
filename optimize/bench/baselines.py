"""What ONNX Runtime gives on its own, for side-by-side comparison: a plain export in a default
session, and that export quantized by ``quantize_dynamic`` / ``quantize_static`` with their
default arguments (after ORT's recommended ``quant_pre_process``)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import onnx_ir as ir

from optimize.calibration.source import CalibrationSource
from optimize.config import CalibrationConfig, ExportConfig
from optimize.exporter import export
from optimize.exporter.resolve import LoadedModel


def plain_export(loaded: LoadedModel) -> ir.Model:
    return export(loaded, dataclasses.replace(ExportConfig(), dynamic_probe_shapes=((1, 4),))).model


def _preprocessed(loaded: LoadedModel, folder: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, ready = folder / "plain.onnx", folder / "pre.onnx"
    ir.save(plain_export(loaded), raw)
    # ORT's symbolic shape inference gives up on torch.export graphs; the ONNX part still runs
    quant_pre_process(str(raw), str(ready), skip_symbolic_shape=True)
    return ready


def quantize_dynamic_default(loaded: LoadedModel) -> ir.Model:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="optimize-ortq-") as folder:
        out = Path(folder) / "dynamic.onnx"
        quantize_dynamic(str(_preprocessed(loaded, Path(folder))), str(out))
        return ir.load(out)


def quantize_static_default(loaded: LoadedModel, calibration: CalibrationConfig = CalibrationConfig()) -> ir.Model:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    source = CalibrationSource(loaded.tokenizer, loaded.input_names, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = source.batches()

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="optimize-ortq-") as folder:
        out = Path(folder) / "static.onnx"
        quantize_static(str(_preprocessed(loaded, Path(folder))), str(out), Reader())
        return ir.load(out)
