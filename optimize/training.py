"""Where the export's training steps run: pruning recovery (``--recover``) and quantization-aware
distillation (``--qat``), chosen by ``--train-device``.

Both are plain PyTorch training loops, so a CUDA device runs them as they are. Measured on one
NVIDIA H200 (benchmarks/NOTES.md, "A second machine"): recovery of the embedded BERT's 30% cut
trained about 1,450 texts a second there against about 32 on 2 CPU cores, some 45x. The rest of
the export (scores, least-squares fit, calibration, ONNX) stays on the CPU.
"""

from __future__ import annotations

from optimize.errors import InputError

#: what ``--train-device`` accepts besides ``cuda:N``
DEVICE_NAMES = ("auto", "cpu", "cuda")


def training_device(requested: str) -> str:
    """The torch device name training runs on: ``auto`` takes the first CUDA device PyTorch sees,
    else the CPU; an explicit CUDA device that PyTorch cannot see is refused, not ignored."""
    import torch

    name = requested.strip().lower()
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_NAMES or (colon and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"unknown --train-device {requested!r}", "pass auto, cpu, cuda or cuda:N")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise InputError(
            f"--train-device {requested}: PyTorch {torch.__version__} sees no CUDA device",
            "pass --train-device cpu (or auto), or install a CUDA build of torch on a machine with an NVIDIA GPU",
        )
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise InputError(f"--train-device {requested}: PyTorch sees {count} CUDA device(s)", f"pass cuda:0 to cuda:{count - 1}")
    return name


def describe(device: str) -> str:
    """``cpu``, or the device with its name (``cuda (NVIDIA H200)``), for the manifest."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"
