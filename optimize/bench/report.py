"""Benchmark results as a terminal table, JSON, Markdown and a PNG plot; merging across machines.

JSON schema (``optimize-bench/1``)::

    {"schema": "optimize-bench/1",
     "fingerprint": {"cpu", "machine", "physical_cores", "logical_cores", "isa": [..],
                     "memory_gib", "os", "gpus": [{"name", "driver", "memory"}], "versions": {..}},
     "config": {"batches", "seq_lens", "threads", "baselines", "real_length", "rounds", ...},
     "cells": [{"engine", "batch", "seq_len", "mode", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                "throughput", "speedup", "reference", "rss_mb", "file_mb"}],
     "notes": [..]}

``speedup`` is how many times faster than ``reference`` (PyTorch eager fp32 when measured):
the median over rounds of the ratio of block medians measured in the same round.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from optimize.bench.hardware import one_line
from optimize.errors import InputError

_COLUMNS = ("engine", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "seq/s", "vs ref", "RSS MB", "file MB")


def _row(cell: dict[str, Any]) -> list[str]:
    seq = f"{cell['seq_len']}" + (" (real)" if cell["mode"] == "real-length" else "")
    speed = f"{cell['speedup']:.2f}x {cell['reference']}" if cell.get("speedup") else "-"
    rss = f"{cell['rss_mb']:.0f}" if cell.get("rss_mb") is not None else "-"
    size = f"{cell['file_mb']:.1f}" if cell.get("file_mb") else "-"
    return [
        cell["engine"], str(cell["batch"]), seq, f"{cell['p50_ms']:.2f}", f"{cell['p90_ms']:.2f}",
        f"{cell['p99_ms']:.2f}", f"{cell['throughput']:.1f}", speed, rss, size,
    ]


#: `optimize bench --serve`: a load test of an endpoint (config kind "serve")
_SERVE_COLUMNS = ("endpoint", "clients", "texts/req", "seq", "p50 ms", "p90 ms", "p99 ms", "seq/s", "req/s", "errors", "vs first")


def _serve_row(cell: dict[str, Any]) -> list[str]:
    seq = f"{cell['seq_len']}" + (" (real)" if cell["mode"] == "real-length" else " words")
    speed = f"{cell['speedup']:.2f}x" if cell.get("speedup") else "-"
    return [
        cell["engine"], str(cell["concurrency"]), str(cell["batch"]), seq, f"{cell['p50_ms']:.1f}", f"{cell['p90_ms']:.1f}",
        f"{cell['p99_ms']:.1f}", f"{cell['throughput']:.1f}", f"{cell['requests_per_s']:.1f}", f"{cell['errors']}/{cell['requests']}", speed,
    ]


def _is_serve(result: dict[str, Any]) -> bool:
    return result.get("config", {}).get("kind") == "serve"


def terminal_table(result: dict[str, Any]) -> Table:
    if _is_serve(result):
        table = Table(title=f"load test, client on {one_line(result['fingerprint'])}", show_edge=False)
        for column in _SERVE_COLUMNS:
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        for cell in result["cells"]:
            table.add_row(*_serve_row(cell))
        return table
    table = Table(title=one_line(result["fingerprint"]) + f", {result['config']['threads']} threads", show_edge=False)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for cell in result["cells"]:
        table.add_row(*_row(cell))
    return table


def markdown_table(columns: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(result: dict[str, Any]) -> str:
    if _is_serve(result):
        config = result["config"]
        lines = [
            f"Load test of {', '.join(config['urls'])} from a client on {one_line(result['fingerprint'])}: "
            f"closed-loop clients, {config['duration_s']:g} s per cell after {config['warmup_s']:g} s of warm-up.",
            "",
            *markdown_table(_SERVE_COLUMNS, [_serve_row(c) for c in result["cells"]]),
        ]
        lines += [f"\nNote: {note}" for note in result.get("notes", [])]
        return "\n".join(lines) + "\n"
    lines = [
        f"Measured on {one_line(result['fingerprint'])}, {result['config']['threads']} threads; "
        f"{result['config']['rounds']} rounds of alternating blocks of {result['config']['block_runs']} runs "
        f"(first {result['config']['dropped_per_block']} of each block dropped).",
        "",
        *markdown_table(_COLUMNS, [_row(c) for c in result["cells"]]),
    ]
    for note in result.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result["cells"]
    if _is_serve(result):
        _plot_serve(result, path)
        return
    shapes = list(dict.fromkeys((c["batch"], c["seq_len"], c["mode"]) for c in cells))
    engines = list(dict.fromkeys(c["engine"] for c in cells))
    width = 0.8 / max(len(engines), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(shapes) * max(1, len(engines) / 2)), 4))
    for index, engine in enumerate(engines):
        values = []
        for shape in shapes:
            match = [c for c in cells if (c["batch"], c["seq_len"], c["mode"]) == shape and c["engine"] == engine]
            values.append(match[0]["p50_ms"] if match else 0)
        axis.bar([i + index * width for i in range(len(shapes))], values, width, label=engine)
    axis.set_xticks([i + width * (len(engines) - 1) / 2 for i in range(len(shapes))])
    axis.set_xticklabels([f"b{b} s{s}" + (" real" if m == "real-length" else "") for b, s, m in shapes])
    axis.set_ylabel("p50 latency (ms), lower is better")
    _save_figure(figure, axis, result, path)


def _save_figure(figure: Any, axis: Any, result: dict[str, Any], path: Path) -> None:
    """The machine as the title, the legend, and the PNG written and closed: every bench plot ends so."""
    import matplotlib.pyplot as plt

    axis.set_title(one_line(result["fingerprint"]), fontsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_serve(result: dict[str, Any], path: Path) -> None:
    """Throughput against concurrency, one line per endpoint."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for engine in dict.fromkeys(c["engine"] for c in result["cells"]):
        points = sorted((c["concurrency"], c["throughput"]) for c in result["cells"] if c["engine"] == engine)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel("texts per second, higher is better")
    _save_figure(figure, axis, result, path)


def write_all(result: dict[str, Any], folder: Path, stem: str = "bench") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result))
    if result["cells"]:
        plot(result, paths["png"])
    return paths


def load_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"benchmark result {path} does not exist", "pass JSON files written by `optimize bench`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a readable benchmark JSON ({exc.__class__.__name__})", "pass JSON files written by `optimize bench`") from exc
    if not isinstance(data, dict) or data.get("schema") != "optimize-bench/1":
        raise InputError(f"{path} is not an optimize-bench/1 result", "pass JSON files written by `optimize bench`")
    return data


def merge(results: list[dict[str, Any]]) -> str:
    """One Markdown table: rows engine x shape, columns machine (p50 ms and ratio)."""
    machines = [f"{r['fingerprint']['cpu']} / {r['config']['threads']}t" for r in results]
    keys = list(dict.fromkeys((c["engine"], c["batch"], c["seq_len"], c["mode"]) for r in results for c in r["cells"]))
    lines = ["| engine | batch | seq | " + " | ".join(machines) + " |", "|---|---|---|" + "---|" * len(machines)]
    for engine, batch, seq, mode in keys:
        row = [engine, str(batch), f"{seq}{' (real)' if mode == 'real-length' else ''}"]
        for r in results:
            match = [c for c in r["cells"] if (c["engine"], c["batch"], c["seq_len"], c["mode"]) == (engine, batch, seq, mode)]
            if not match:
                row.append("-")
                continue
            c = match[0]
            ratio = f" ({c['speedup']:.2f}x)" if c.get("speedup") else ""
            row.append(f"{c['p50_ms']:.2f} ms{ratio}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- {m}: {one_line(r['fingerprint'])}" for m, r in zip(machines, results)]
    return "\n".join(lines) + "\n"
