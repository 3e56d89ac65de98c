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
    inner = op_counts(model, in_subgraphs=True)  # the unpad pass's per-sequence attention
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(model.opset_imports.items()))
    dtypes = Counter(
        v.const_value.dtype.name.lower() for v in model.graph.initializers.values() if v.const_value is not None
    )
    lines = [
        f"opsets: {opsets}",
        "inputs: " + "; ".join(_shape(v) for v in model.graph.inputs),
        "outputs: " + "; ".join(_shape(v) for v in model.graph.outputs),
        f"nodes: {sum(ops.values())} ({', '.join(f'{k} {n}' for k, n in ops.most_common())})",
        *([f"in branches and loops: {sum(inner.values())} ({', '.join(f'{k} {n}' for k, n in inner.most_common())})"] if inner else []),
        f"weights: {initializer_bytes(model) / 1e6:.1f} MB in {len(model.graph.initializers)} initializers "
        f"({', '.join(f'{k} {n}' for k, n in dtypes.most_common())})",
    ]
    return lines


def pass_summary(record: dict[str, Any]) -> str:
    """A pass and the gist of what it did, for one-line listings."""
    stats = record.get("stats", {})
    name = record["name"]
    if stats.get("fusions"):
        return f"{name} ({', '.join(f'{k} {v}' for k, v in stats['fusions'].items())})"
    if "int8_layers" in stats and "layers" in stats:
        linear = stats["int8_layers"] + stats.get("fp32_layers", 0)
        kept = [layer["layer"] for layer in stats["layers"][:linear] if layer["choice"] == "fp32"]
        extra = f": {', '.join(kept)} fp32" if kept else ""
        sites = f", {stats['int8_sites']} of {stats['activation_sites']} TensorRT fusion sites" if stats.get("activation_sites") else ""
        return f"{name} ({stats['int8_layers']} of {linear} linear layers int8{extra}{sites})"
    if stats.get("tables"):
        return f"{name} ({len(stats['tables'])} tables, {stats['bytes_saved'] / 1e6:.0f} MB saved)"
    if stats.get("weights"):
        return f"{name} ({stats['weights']} fp32 weights stored int8, {stats['bytes_saved'] / 1e6:.0f} MB saved)"
    if stats.get("converted"):
        return f"{name} ({stats['converted']} converted)"
    if stats.get("folded"):
        return f"{name} ({stats['folded']} bias Adds folded into LayerNorms)"
    return name


def sensitivity_lines(stats: dict[str, Any]) -> list[str]:
    """The int8 pass's per-layer table: each layer alone in int8 (mean/min cosine), and the choice."""
    lines = [
        f"  int8 sensitivity ({stats.get('method')} ranges, {stats.get('activations')} activations, "
        f"{stats.get('calibration_texts')} calibration texts, {stats.get('held_back_texts')} held back):",
        f"    {'layer':14s} {'alone int8':>19s} {'+smooth':>19s} {'+split':>19s}  choice",
    ]
    for layer in stats.get("layers", []):
        cells = []
        for variant in ("int8", "int8+smooth", "int8+split"):
            score = layer["alone"].get(variant)
            cells.append(f"{score[0]:.6f}/{score[1]:.6f}" if score else "-")
        why = f"  ({layer['why']})" if layer.get("why") else ""
        lines.append(f"    {layer['layer']:14s} {cells[0]:>19s} {cells[1]:>19s} {cells[2]:>19s}  {layer['choice']}{why}")
    final = stats.get("held_back_final")
    if final:
        lines.append(f"  held back: all int8 plain {stats.get('held_back_all_int8_plain')}, best variants {stats.get('held_back_all_int8_chosen')}, final {final}")
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
            simple = {k: v for k, v in p.get("stats", {}).items() if v not in ({}, [], None) and not isinstance(v, (list, dict))}
            stats = ", ".join(f"{k} {v}" for k, v in simple.items())
            lines.append(f"  {pass_summary(p)}: nodes {p['nodes'][0]} -> {p['nodes'][1]}" + (f"; {stats}" if stats else ""))
            if "layers" in p.get("stats", {}):
                lines.extend(sensitivity_lines(p["stats"]))
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
