"""The TensorRT path on a real GPU, in one command (what a CPU-only test suite cannot prove):

    pip install -e '.[tensorrt]' && python benchmarks/gpu_check.py [--out benchmarks/out/gpu] [--fresh]

Needs an NVIDIA GPU, and TensorRT >=10.15,<11 with Polygraphy >=0.49,<0.54 (the `tensorrt` extra).
Each step prints one PASS/FAIL line; the exit code is 1 if any failed, and every figure is written
to OUT/gpu_check.json.

1. `optimize export bert` to trt-fp16 and trt-int8 with the profile batch 1,8,32 and sequence
   1,128,128: with TensorRT present the export builds engine.plan (strongly typed) and checks it
   against ONNX Runtime on held-out text (batches of 16, cut and padded to the profile);
2. `optimize build DIR --batch 1,8,8`: only the batch range changes (the recorded sequence and
   workspace are kept), the timing cache made by step 1 is reused, no timing.cache.lock is left,
   and the manifest keeps the parity figures and Polygraphy's per-output statistics;
3. each engine run twice on different feeds of one shape: the first outputs must not change
   (Polygraphy reuses its host buffers between calls);
4. a shape outside the profile: one line of the project's error, not a Polygraphy traceback;
5. `optimize bench` at batch 1 and 8, sequence 128, beside PyTorch eager fp32 (on the CPU);
   and batch 64, outside the rebuilt profile, refused in one line.
Bundles are kept in OUT and reused unless --fresh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("trt-fp16", "trt-int8")


def optimize(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "optimize", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in (done.stdout + done.stderr).strip().splitlines()[-6:]:
        print(f"    {line}")
    return done


class Checks:
    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def run(self, name: str, step: Callable[[], dict[str, Any] | None]) -> None:
        print(f"-- {name}", flush=True)
        try:
            figures = step() or {}
            self.results[name] = {"passed": True, **figures}
            print(f"PASS {name}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a failed check is reported and the next one runs
            self.results[name] = {"passed": False, "error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()}
            print(f"FAIL {name}: {exc.__class__.__name__}: {' '.join(str(exc).split())[:400]}", flush=True)

    @property
    def ok(self) -> bool:
        return all(r["passed"] for r in self.results.values())


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def export_step(folder: Path, target: str, fresh: bool) -> Callable[[], dict[str, Any]]:
    def step() -> dict[str, Any]:
        if fresh or not (folder / "engine.plan").is_file():
            done = optimize(
                "export", "bert", "--target", target, "--output", str(folder), "--force", "--no-speed",
                "--batch", "1,8,32", "--seq-len", "1,128,128",
            )
            expect(done.returncode == 0, f"export exited {done.returncode}: {done.stderr.strip()[-400:]}")
        engine = manifest_of(folder)["tensorrt"]["engine"]
        expect(engine is not None and (folder / "engine.plan").stat().st_size > 0, "no engine.plan after export on a GPU")
        expect(engine["strongly_typed"], "the engine was not built strongly typed")
        expect(engine["ort_comparison"]["passed"], f"engine vs ONNX Runtime failed: {engine['ort_comparison']['parity']['failures']}")
        expect((folder / "timing.cache").is_file() and not (folder / "timing.cache.lock").exists(), "timing cache missing or its lock left")
        return {"tensorrt": engine["tensorrt"], "device": engine["device"], "build_seconds": engine["build_seconds"],
                "engine_vs_onnxruntime": engine["ort_comparison"]["parity"], "polygraphy": engine["ort_comparison"]["polygraphy"]}

    return step


def build_step(folder: Path) -> Callable[[], dict[str, Any]]:
    def step() -> dict[str, Any]:
        before = manifest_of(folder)["tensorrt"]
        done = optimize("build", str(folder), "--batch", "1,8,8")
        expect(done.returncode == 0, f"build exited {done.returncode}: {done.stderr.strip()[-400:]}")
        expect("timing.cache ignored" not in done.stdout + done.stderr, "the timing cache made on this GPU was not reused")
        manifest = manifest_of(folder)
        after = manifest["tensorrt"]
        low, opt, high = after["profile"]["input_ids"]
        old_low, old_opt, old_high = before["profile"]["input_ids"]
        expect((low[0], opt[0], high[0]) == (1, 8, 8), f"batch range not applied: {after['profile']}")
        expect((low[1], opt[1], high[1]) == (old_low[1], old_opt[1], old_high[1]), "--batch reset the recorded sequence range")
        expect(after["workspace_mib"] == before["workspace_mib"], "--batch reset the recorded workspace")
        expect("timing.cache.lock" not in manifest["files"] and not (folder / "timing.cache.lock").exists(), "timing.cache.lock in the bundle")
        check = after["engine"]["ort_comparison"]
        expect(check["passed"] and check["polygraphy"], "the rebuilt engine's check failed or lost Polygraphy's statistics")
        return {"profile": after["profile"]["input_ids"], "engine_vs_onnxruntime": check["parity"], "polygraphy": check["polygraphy"]}

    return step


def runner_step(folder: Path) -> Callable[[], dict[str, Any]]:
    def step() -> dict[str, Any]:
        import numpy as np
        from transformers import AutoTokenizer

        from optimize.bench.workload import fixed_shape
        from optimize.bundle import read_bundle
        from optimize.errors import BuildError
        from optimize.runtimes.tensorrt import bundle_runner

        runner = bundle_runner(read_bundle(folder))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        first = fixed_shape(tokenizer, runner.input_names, 8, 128)
        second = {k: np.ascontiguousarray(v[::-1]) for k, v in first.items()}  # same shape, other rows first
        with runner:
            out_first = runner.infer(first)
            kept = {k: v.copy() for k, v in out_first.items()}
            runner.infer(second)
            changed = [k for k in kept if not np.array_equal(kept[k], out_first[k])]
            expect(not changed, f"outputs {changed} changed under the caller after the next call (buffers not copied)")
            too_big = fixed_shape(tokenizer, runner.input_names, 64, 128)
            try:
                runner.infer(too_big)
            except BuildError as exc:
                line = exc.one_line()
                expect("\n" not in line, "the out-of-profile error is not one line")
            else:
                raise AssertionError("an out-of-profile batch of 64 ran without an error")
        return {"out_of_profile_error": line}

    return step


def bench_step(folders: list[Path], out: Path) -> Callable[[], dict[str, Any]]:
    def step() -> dict[str, Any]:
        done = optimize("bench", *map(str, folders), "--batch", "1,8", "--seq", "128", "--baseline", "torch", "--out", str(out / "bench"))
        expect(done.returncode == 0, f"bench exited {done.returncode}: {done.stderr.strip()[-400:]}")
        cells = json.loads((out / "bench" / "bench.json").read_text())["cells"]
        names = {f.name for f in folders}
        expect({(c["engine"], c["batch"]) for c in cells if c["engine"] in names} == {(n, b) for n in names for b in (1, 8)}, "missing cells")
        refused = optimize("bench", str(folders[0]), "--batch", "64", "--seq", "128", "--out", str(out / "bench-refused"))
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        expect(refused.returncode == 2 and len(errors) == 1 and "profile" in errors[0], f"batch 64 not refused in one line: {refused.stderr[-400:]}")
        return {"cells": [{k: c[k] for k in ("engine", "batch", "seq_len", "p50_ms", "p99_ms", "throughput", "speedup")} for c in cells]}

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu")
    parser.add_argument("--fresh", action="store_true", help="export the bundles again even if they exist")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from optimize.runtimes.tensorrt import unavailable

    reason = unavailable()
    if reason:
        print(f"error: cannot check the TensorRT path here: {reason}; run this on a machine with an NVIDIA GPU after pip install -e '.[tensorrt]'")
        return 2
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    folders = [args.out / target for target in TARGETS]

    checks = Checks()
    for target, folder in zip(TARGETS, folders):
        checks.run(f"export {target} (engine built and checked against ONNX Runtime)", export_step(folder, target, args.fresh))
    for target, folder in zip(TARGETS, folders):
        checks.run(f"build {target} --batch 1,8,8 (sequence and workspace kept, timing cache reused)", build_step(folder))
        checks.run(f"run {target}: outputs copied out, out-of-profile shape in one line", runner_step(folder))
    checks.run("bench batch 1 and 8, sequence 128; batch 64 refused", bench_step(folders, args.out))

    from optimize.bench.hardware import fingerprint

    report = {"fingerprint": fingerprint(), "checks": checks.results}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{'all checks passed' if checks.ok else 'SOME CHECKS FAILED'}; figures in {args.out / 'gpu_check.json'}")
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
