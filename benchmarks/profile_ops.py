"""Where a bundle's time goes: ONNX Runtime's profiler, time per operator type.

    python benchmarks/profile_ops.py BUNDLE [--batch 1] [--seq 128] [--threads 2] [--runs 150] [--real-length] [--json out.json]

The bundle runs in the session its manifest records (the same as `optimize bench`), with ORT's
profiler on, on `--runs` batches of real held-out text at exactly `--seq` tokens, or with
`--real-length` on the batches `optimize bench --real-length` cycles through (held-out sentences
and paragraphs, each batch padded to its longest, at most `--seq`). Each node's
kernel time is its median over the runs (the mean with `--real-length`, whose batches differ; the
first `--warmup` dropped); an operator type's time is the sum over its nodes. The run time is the
median (mean) of the profiler's whole-run events
(kernels plus what lies between them), so kernels / run says how much of a run the kernels are.
The profiler itself costs a little: compare ratios with `optimize bench`, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def profile(
    bundle_path: Path, batch: int, seq_len: int, threads: int, runs: int, warmup: int, real_length: bool = False
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from optimize.bench.engines import bundle_session
    from optimize.bench.hardware import fingerprint
    from optimize.bench.workload import fixed_shape
    from optimize.bench.workload import real_length as real_length_batches
    from optimize.bundle import read_bundle
    from optimize.config import BenchConfig
    from optimize.runtimes.ort import build_session, session_options

    bundle = read_bundle(bundle_path)
    config = bundle_session(bundle, threads)
    with tempfile.TemporaryDirectory(prefix="optimize-profile-") as folder:
        options = session_options(config)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = build_session(bundle.model_path, config, options)  # as optimize.load builds it
        names = tuple(i.name for i in session.get_inputs())
        tokenizer = AutoTokenizer.from_pretrained(bundle.path)
        if real_length:
            workload = real_length_batches(tokenizer, names, batch, seq_len, BenchConfig().real_length_texts)
        else:
            workload = [fixed_shape(tokenizer, names, batch, seq_len)]
        for run in range(warmup + runs):
            session.run(None, workload[run % len(workload)])
        events = json.loads(Path(session.end_profiling()).read_text())

    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    run_us: list[float] = []
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            per_node[node].append(float(event["dur"]))
            op_of[node] = event.get("args", {}).get("op_name", "?")
        elif event.get("cat") == "Session" and event.get("name") == "model_run":
            run_us.append(float(event["dur"]))
    # each node runs once per run (sequential executor): drop its first `warmup` timings. Real
    # lengths vary from batch to batch, so there a node's mean is what it costs on average
    typical = np.mean if real_length else np.median
    node_ms = {node: float(typical(times[warmup:] or times)) / 1e3 for node, times in per_node.items()}
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"nodes": 0, "ms": 0.0})
    for node, ms in node_ms.items():
        by_op[op_of[node]]["nodes"] += 1
        by_op[op_of[node]]["ms"] += ms
    ops = sorted(({"op": op, "nodes": int(v["nodes"]), "ms": v["ms"]} for op, v in by_op.items()), key=lambda r: -r["ms"])
    return {
        "bundle": str(bundle_path),
        "target": bundle.target,
        "batch": batch,
        "seq_len": seq_len,
        "real_length": real_length,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "disabled_optimizers": list(config.disabled_optimizers),
        "op_types": ops,
        "kernels_ms": sum(node_ms.values()),
        "run_ms": float(typical(run_us[warmup:] or run_us)) / 1e3 if run_us else None,
        "fingerprint": fingerprint(),
    }


def _shown(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def markdown(data: dict[str, Any]) -> str:
    """The per-operator-type table, with the share of all kernel time."""
    total = data["kernels_ms"]
    real = data.get("real_length", False)
    shape = f"real lengths up to {data['seq_len']}" if real else f"sequence {data['seq_len']}"
    lines = [
        f"`{Path(data['bundle']).name}` ({data['target']}), batch {data['batch']}, {shape}, "
        f"{data['threads']} threads; {'mean' if real else 'median'} per node over {data['runs']} profiled runs "
        f"(`python benchmarks/profile_ops.py {_shown(data['bundle'])} --batch {data['batch']} --seq {data['seq_len']} "
        f"--threads {data['threads']} --runs {data['runs']}{' --real-length' if real else ''}`).",
        "",
        "| operator type | nodes | ms | share of kernel time |",
        "| --- | --- | --- | --- |",
    ]
    for row in data["op_types"]:
        lines.append(f"| {row['op']} | {row['nodes']} | {row['ms']:.2f} | {row['ms'] / total:.0%} |")
    run = f" in a {data['run_ms']:.2f} ms run ({'mean' if real else 'median'} of the profiler's run events)" if data.get("run_ms") else ""
    lines += ["", f"Kernels: {total:.2f} ms{run}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--real-length", action="store_true", help="real sentences, each batch padded to its longest")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    data = profile(args.bundle, args.batch, args.seq, args.threads, args.runs, args.warmup, args.real_length)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
