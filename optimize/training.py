"""Where the export's training steps run: pruning recovery (``--recover``) and quantization-aware
distillation (``--qat``), chosen by ``--train-device``.

Both are plain PyTorch training loops, so a CUDA device runs them as they are; the rest of the
export (scores, least-squares fit, calibration, ONNX) stays on the CPU. What a GPU gave on the
embedded BERT is in benchmarks/NOTES.md, "A second machine".
"""

from __future__ import annotations

import re
from typing import Any

from optimize.errors import InputError, OptimizeError

#: auto, cpu, cuda or cuda:N (ASCII digits, no leading zero: what torch.device accepts)
_NAME = re.compile(r"(auto|cpu|cuda)(?::(0|[1-9][0-9]*))?", re.ASCII)


def checked_name(requested: str) -> str:
    """``requested`` normalised, or an InputError: only the spelling is checked, nothing is probed."""
    name = requested.strip().lower()
    match = _NAME.fullmatch(name)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InputError(f"unknown --train-device {requested!r}", "pass auto, cpu, cuda or cuda:N")
    return name


def training_device(requested: str) -> str:
    """The torch device name training runs on: ``auto`` takes the first CUDA device PyTorch sees,
    else the CPU. A CUDA device PyTorch cannot see, or cannot compute on, is refused before any
    work rather than failing after minutes of fitting."""
    import torch

    name = checked_name(requested)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if name == "auto":
        name = "cuda"
    if not torch.cuda.is_available():
        raise InputError(
            f"--train-device {requested}: PyTorch {torch.__version__} sees no CUDA device",
            "pass --train-device cpu (or auto), or install a CUDA build of torch on a machine with an NVIDIA GPU",
        )
    count = torch.cuda.device_count()
    if ":" in name and int(name.split(":")[1]) >= count:
        raise InputError(f"--train-device {requested}: PyTorch sees {count} CUDA device(s)", f"pass cuda:0 to cuda:{count - 1}")
    try:  # a device in exclusive use, or one this torch build has no kernels for, fails here
        torch.ones(1, device=name).add_(1).cpu()
    except Exception as exc:  # noqa: BLE001 - whatever CUDA raises, the fix is the same
        raise InputError(
            f"--train-device {requested}: {name} cannot compute ({' '.join(str(exc).split())[:200]})",
            "pass --train-device cpu",
        ) from exc
    return name


def describe(device: str) -> str:
    """``cpu``, or the device with its name (``cuda (NVIDIA H200)``), for the manifest."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"


def training_failed(device: str, exc: BaseException) -> OptimizeError | None:
    """The one-line error for a failure of training on a GPU (out of memory, a CUDA error), with
    the CPU as the fix; None for anything else, which stays the bug it is."""
    import torch

    gpu_failure = isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "CUDA" in str(exc))
    if not device.startswith("cuda") or not gpu_failure:
        return None
    return OptimizeError(f"training on {device} failed: {' '.join(str(exc).split())[:200]}", "pass --train-device cpu", internal=True)


def release(device: str, *modules: Any) -> None:
    """Every module back on the CPU (the exporter and the parity reference read CPU modules), and
    the GPU memory training cached handed back (a trt-* target builds its engine next)."""
    for module in modules:
        module.to("cpu")
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
