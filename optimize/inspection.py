"""What a bundle or an ONNX file holds, as lines of text for ``optimize inspect``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx_ir as ir

from optimize.bundle import MANIFEST_FILE, read_bundle
from optimize.passes.base import initializer_bytes, op_counts
from optimize.untrusted import load_untrusted


def _shape(value: ir.Value) -> str:
    dims = [str(d) if not isinstance(d, int) else str(d) for d in (value.shape or [])]
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    return f"{value.name}: {dtype}[{', '.join(dims)}]"


def graph_lines(model: ir.Model) -> list[str]:
    ops = op_counts(model)
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(model.opset_imports.items()))
    dtypes = Counter(
        v.const_value.dtype.name.lower() for v in model.graph.initializers.values() if v.const_value is not None
    )
    lines = [
        f"opsets: {opsets}",
        "inputs: " + "; ".join(_shape(v) for v in model.graph.inputs),
        "outputs: " + "; ".join(_shape(v) for v in model.graph.outputs),
        f"nodes: {sum(ops.values())} ({', '.join(f'{k} {n}' for k, n in ops.most_common())})",
        f"weights: {initializer_bytes(model) / 1e6:.1f} MB in {len(model.graph.initializers)} initializers "
        f"({', '.join(f'{k} {n}' for k, n in dtypes.most_common())})",
    ]
    return lines


def _manifest_lines(manifest: dict[str, Any]) -> list[str]:
    source = manifest.get("source", {})
    lines = [
        f"target: {manifest.get('target')} ({manifest.get('runtime')}, {manifest.get('precision')}), task {manifest.get('task')}",
        f"source: {source.get('description')} sha256 {str(source.get('sha256', ''))[:16]}",
        f"created: {manifest.get('created')}",
    ]
    passes = manifest.get("passes", {}).get("passes", [])
    if passes:
        lines.append("passes: " + " -> ".join(p["name"] for p in passes))
        for p in passes:
            stats = ", ".join(f"{k} {v}" for k, v in p.get("stats", {}).items() if v not in ({}, [], None))
            lines.append(f"  {p['name']}: nodes {p['nodes'][0]} -> {p['nodes'][1]}" + (f"; {stats}" if stats else ""))
    parity = manifest.get("parity")
    if parity:
        bits = [f"cosine mean {parity['cosine_mean']:.6f} min {parity['cosine_min']:.6f}"]
        if parity.get("neighbour_agreement") is not None:
            bits.append(f"neighbour agreement {parity['neighbour_agreement']:.3f}")
        if parity.get("label_agreement") is not None:
            bits.append(f"label agreement {parity['label_agreement']:.4f}")
        bits.append(f"max abs error {parity['max_abs_error']:.2e}")
        lines.append(f"parity: {', '.join(bits)} over {parity['samples']} held-out texts")
    speed = manifest.get("speed")
    if speed:
        lines.append(
            f"speed: {speed['speedup']:.2f}x PyTorch eager fp32 ({speed['artifact_ms']:.1f} vs {speed['pytorch_ms']:.1f} ms, "
            f"batch {speed['batch']}, sequence {speed['seq_len']}, {speed['threads']} threads)"
        )
    hardware = manifest.get("hardware", {})
    if hardware:
        lines.append(f"measured on: {hardware.get('cpu')} ({hardware.get('physical_cores')} cores, {','.join(hardware.get('isa', []))})")
    files = manifest.get("files", {})
    if files:
        lines.append("files: " + ", ".join(f"{n} {e['bytes'] / 1e6:.2f} MB" for n, e in files.items()))
    for note in manifest.get("notes", []):
        lines.append(f"note: {note}")
    return lines


def describe(path: Path) -> list[str]:
    """Lines describing a bundle folder (manifest, then graph) or a bare ONNX file (graph)."""
    if path.is_dir() or (path.exists() and (path / MANIFEST_FILE).exists()):
        bundle = read_bundle(path)
        model = load_untrusted(bundle.model_path)
        return [f"bundle: {path}", *_manifest_lines(bundle.manifest), *graph_lines(model)]
    model = load_untrusted(path)
    return [f"onnx file: {path} ({path.stat().st_size / 1e6:.2f} MB)", *graph_lines(model)]
