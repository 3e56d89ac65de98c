"""How fast this CPU multiplies matrices: single ONNX MatMuls against PyTorch, fp32 and int8.

    python benchmarks/gemm_roofline.py [--bundle DIR] [--tokens 128] [--threads 2] [--rounds 7] [--json out.json]

For each GEMM shape of an encoder layer (taken from the bundle's config.json: QKV packed,
attention output, FFN in, FFN out, at `--tokens` rows = batch x sequence) and a square
1024^3 for the CPU's peak, three engines are timed side by side in alternating blocks (the
harness of `optimize bench`): a one-node ONNX MatMul in ONNX Runtime (fp32, weight as an
initializer, as in a bundle), `torch.matmul` (fp32), and a one-node ONNX MatMulInteger in ONNX
Runtime (uint8 x int8 -> int32: the int8 GEMM under ort-int8's kernels). A figure is
2*M*K*N operations over the median block time: GFLOP/s for fp32, GOPS for int8.
`model_ms` sums each engine's time over every GEMM of the model (layers x the four shapes):
the floor a runtime cannot go below without doing less arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SQUARE = 1024


def encoder_shapes(config: dict[str, Any], tokens: int) -> list[dict[str, Any]]:
    """The GEMMs of one encoder layer as (name, M, K, N), from a Hugging Face config."""
    hidden = int(config.get("hidden_size") or config.get("dim"))
    inner = int(config.get("intermediate_size") or config.get("hidden_dim"))
    return [
        {"name": "qkv (packed)", "m": tokens, "k": hidden, "n": 3 * hidden},
        {"name": "attention output", "m": tokens, "k": hidden, "n": hidden},
        {"name": "ffn in", "m": tokens, "k": hidden, "n": inner},
        {"name": "ffn out", "m": tokens, "k": inner, "n": hidden},
    ]


def _ort_matmul(m: int, k: int, n: int, threads: int, integer: bool):  # noqa: ANN202
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from optimize.config import SessionConfig
    from optimize.runtimes.ort import session_options

    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        zero_a = numpy_helper.from_array(np.array(128, np.uint8), "za")
        zero_b = numpy_helper.from_array(np.array(0, np.int8), "zb")
        node = helper.make_node("MatMulInteger", ["x", "w", "za", "zb"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [weight, zero_a, zero_b])
        feed = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
        feed = rng.standard_normal((m, k), dtype=np.float32)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), session_options(SessionConfig(threads=threads)),
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": feed})


def _torch_matmul(m: int, k: int, n: int):  # noqa: ANN202
    import torch

    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)

    def run() -> object:
        with torch.inference_mode():
            return torch.matmul(x, w)

    return run


#: each timed call repeats its GEMM to last about this long: a GEMM of the model takes tens of
#: microseconds, and in blocks that short the other engine's threads, still spinning after its
#: block, decide the time (PyTorch read 1000x slower right after ONNX Runtime's blocks)
CALL_SECONDS = 0.005


def _repeated(call, seconds: float):  # noqa: ANN001, ANN202
    """``call`` looped enough times to take about ``seconds``; returns (looped call, repeats)."""
    import time

    for _ in range(3):
        call()
    started = time.perf_counter()
    for _ in range(5):
        call()
    once = (time.perf_counter() - started) / 5
    repeats = max(1, round(seconds / max(once, 1e-7)))

    def looped() -> None:
        for _ in range(repeats):
            call()

    return looped, repeats


def measure(shapes: list[dict[str, Any]], threads: int, rounds: int, block_runs: int) -> list[dict[str, Any]]:
    import torch

    from optimize.bench.harness import Schedule, alternate

    torch.set_num_threads(threads)
    rows = []
    for shape in shapes:
        m, k, n = shape["m"], shape["k"], shape["n"]
        calls = {
            "ort-fp32": _ort_matmul(m, k, n, threads, integer=False),
            "pytorch-fp32": _torch_matmul(m, k, n),
            "ort-int8": _ort_matmul(m, k, n, threads, integer=True),
        }
        engines, repeats = {}, {}
        for name, call in calls.items():
            engines[name], repeats[name] = _repeated(call, CALL_SECONDS)
        timing = alternate(engines, Schedule(rounds=rounds, block_runs=block_runs, dropped_per_block=3))
        ops = 2.0 * m * k * n
        row = dict(shape)
        for name in engines:
            seconds = timing.median_seconds(name) / repeats[name]
            row[name] = {"ms": seconds * 1e3, "g_per_s": ops / seconds / 1e9, "repeats": repeats[name]}
        # ratios per round (as optimize bench), corrected for each engine's repeats
        row["ort_vs_pytorch"] = timing.ratio("pytorch-fp32", "ort-fp32") * repeats["ort-fp32"] / repeats["pytorch-fp32"]
        row["int8_vs_fp32"] = timing.ratio("ort-fp32", "ort-int8") * repeats["ort-int8"] / repeats["ort-fp32"]
        rows.append(row)
    return rows


def roofline(bundle: Path | None, tokens: int, threads: int, rounds: int, block_runs: int) -> dict[str, Any]:
    from optimize.bench.hardware import fingerprint

    config: dict[str, Any] = {}
    layers = 0
    shapes: list[dict[str, Any]] = []
    if bundle is not None:
        config = json.loads((bundle / "config.json").read_text())
        layers = int(config.get("num_hidden_layers") or config.get("n_layers") or 0)
        shapes = encoder_shapes(config, tokens)
    square = {"name": f"square {SQUARE}", "m": SQUARE, "k": SQUARE, "n": SQUARE}
    rows = measure([*shapes, square], threads, rounds, block_runs)
    model_ms = None
    if shapes:
        per_layer = rows[: len(shapes)]
        model_ms = {name: layers * sum(r[name]["ms"] for r in per_layer) for name in ("ort-fp32", "pytorch-fp32", "ort-int8")}
    return {
        "bundle": str(bundle) if bundle else None,
        "tokens": tokens,
        "layers": layers,
        "threads": threads,
        "rounds": rounds,
        "block_runs": block_runs,
        "rows": rows,
        "model_ms": model_ms,
        "fingerprint": fingerprint(),
    }


def _shown(path: str | None) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def markdown(data: dict[str, Any]) -> str:
    bundle = f" --bundle {_shown(data['bundle'])}" if data.get("bundle") else ""
    lines = [
        f"{data['threads']} threads, {data['rounds']} rounds of alternating blocks of {data['block_runs']} runs "
        f"(`python benchmarks/gemm_roofline.py{bundle} --tokens {data['tokens']} --threads {data['threads']} --rounds {data['rounds']}`).",
        "",
        "| GEMM | M x K x N | ORT fp32 GFLOP/s | PyTorch fp32 GFLOP/s | ORT / PyTorch | ORT int8 GOPS | int8 / fp32 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['name']} | {row['m']} x {row['k']} x {row['n']} | {row['ort-fp32']['g_per_s']:.0f} | "
            f"{row['pytorch-fp32']['g_per_s']:.0f} | {row['ort_vs_pytorch']:.2f}x | {row['ort-int8']['g_per_s']:.0f} | "
            f"{row['int8_vs_fp32']:.2f}x |"
        )
    if data.get("model_ms"):
        ms = data["model_ms"]
        lines += ["", f"Every GEMM of the model ({data['layers']} layers x the four shapes above, {data['tokens']} tokens): "
                  f"{ms['ort-fp32']:.2f} ms in ONNX Runtime fp32, {ms['pytorch-fp32']:.2f} ms in PyTorch, "
                  f"{ms['ort-int8']:.2f} ms as ONNX Runtime int8 GEMMs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a bundle whose config.json gives the GEMM shapes")
    parser.add_argument("--tokens", type=int, default=128, help="rows of each GEMM: batch x sequence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block-runs", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    data = roofline(args.bundle, args.tokens, args.threads, args.rounds, args.block_runs)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
