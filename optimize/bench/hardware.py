"""Where a figure was measured: CPU, ISA extensions, memory, GPU, library versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: ISA extensions that decide which kernels run: the fp32 GEMM width, int8 dot products, bf16.
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "f16c": "f16c",
    "asimd": "asimd",  # Arm NEON
    "sve": "sve",
    "i8mm": "i8mm",
    "bf16": "bf16",
}

PACKAGES = ("optimize", "torch", "transformers", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy", "tensorrt", "polygraphy")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them; empty where there is none."""
    return frozenset(_cpuinfo()[1])


def _gpus() -> list[dict[str, str]]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (part.strip() for part in (line.split(",") + ["", ""])[:3])
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def fingerprint() -> dict[str, Any]:
    """A JSON-ready description of this machine; stable across calls in one process."""
    import psutil

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "machine": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False) or os.cpu_count(),
        "logical_cores": psutil.cpu_count(logical=True) or os.cpu_count(),
        "isa": sorted(name for name, flag in ISA_FLAGS.items() if flag in flags),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "gpus": _gpus(),
        "versions": package_versions(),
    }


def one_line(fp: dict[str, Any] | None = None) -> str:
    fp = fp or fingerprint()
    isa = ",".join(fp["isa"]) or "baseline"
    gpu = "; " + ", ".join(g["name"] for g in fp["gpus"]) if fp["gpus"] else ""
    return f"{fp['cpu']} ({fp['physical_cores']} cores, {isa}, {fp['memory_gib']} GiB){gpu}"
