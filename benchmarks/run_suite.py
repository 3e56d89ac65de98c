"""The benchmark suite: one command, rewrites benchmarks/RESULTS.md.

    python benchmarks/run_suite.py [--quick] [--skip-accuracy]

1. exports the embedded BERT to every target this machine can run (and the TensorRT targets as
   graphs), plus the pruning frontier (ort-fp32 at --prune 0.15 and 0.3, ort-int8 at 0.3);
   bundles are kept in benchmarks/out/bundles and reused unless --fresh;
2. `optimize bench` on them, side by side with PyTorch eager fp32 and ONNX Runtime's own
   default export, at batch x sequence shapes and at real sentence lengths;
3. a BERT-base-sized random-weight model (12 layers, hidden 768) for speed only;
4. the accuracy suite (benchmarks/accuracy.py): fine-tuned classifier on Rotten Tomatoes;
5. RESULTS.md: the fingerprint, the tables, the plot, the pruning frontier, accuracy.
Each step's output is kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
BUNDLES = OUT / "bundles"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PLOTS = ROOT / "benchmarks" / "plots"

EMBEDDED = {
    "ort-fp32": [],
    "ort-int8": [],
    "ort-fp16": [],
    "trt-fp16": [],
    "trt-int8": [],
    # the frontier: 30% passes the default --prune-min-cosine 0.95 without recovery (0.973
    # reconstructed), and 850 recovery steps (9 minutes here) reach 0.981
    "ort-fp32-prune0.15": ["--target", "ort-fp32", "--prune", "0.15"],
    "ort-fp32-prune0.3-recover850": ["--target", "ort-fp32", "--prune", "0.3", "--recover", "850"],
    "ort-fp32-prune0.3": ["--target", "ort-fp32", "--prune", "0.3"],
    "ort-int8-prune0.3": ["--target", "ort-int8", "--prune", "0.3"],
}


NOTES = [
    "- Ratios come from one run with every engine alternating; the same ratio moves by about 0.1x",
    "  between runs on this shared 2-core machine (ort-fp32 at b1/s128 has read 1.52x-1.67x).",
    "- ort-int8 keeps 15-17 of 24 linear layers int8: the budget judges top-1 neighbour agreement on",
    "  192 held-back texts (0.96 to spend), and all-int8 reads 0.948 there; the weights of the layers",
    "  kept fp32 are stored int8 and folded back at load (23.7 MB). Judged on 96 texts the",
    "  search kept 23 of 24 (24.1 MB, 2.24-2.30x), but that sample passed trt-int8 graphs that then",
    "  failed parity (agreement 0.946 on 239 texts). The int8 GEMM on this AVX2 CPU (no VNNI) is only about 2x the fp32 GEMM (306 vs 151 GOPS).",
    "- Pruning at 30% of encoder parameters: PyTorch-side cosine 0.84 after the cut, 0.973 after the",
    "  least-squares reconstruction on every calibration text, 0.981 after 850 recovery steps (539 s).",
    "- trt-fp16 and trt-int8 are graphs only here (no TensorRT, no GPU): see README, deploying to a GPU.",
]


def optimize(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "optimize", *args]
    print("  $ optimize " + " ".join(args), flush=True)
    return subprocess.run(command, capture_output=True, text=True)


def export_all(fresh: bool) -> dict[str, Path]:
    bundles = {}
    for name, flags in EMBEDDED.items():
        folder = BUNDLES / name
        if folder.joinpath("manifest.json").is_file() and not fresh:
            bundles[name] = folder
            continue
        target_flags = flags or ["--target", name]
        done = optimize("export", "bert", *target_flags, "--output", str(folder), "--force", "--no-speed")
        if done.returncode != 0:
            print(f"  {name}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}", flush=True)
            continue
        bundles[name] = folder
    return bundles


def bert_base_random() -> Path:
    """A BERT-base-sized model with random weights and the embedded tokenizer: for speed only."""
    folder = ROOT / "benchmarks" / ".cache" / "bert-base-random"
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    from optimize.exporter.resolve import embedded_model_path

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(folder)
    return folder


def bench(bundles: list[Path], out: Path, *flags: str) -> dict | None:
    if (out / "bench.json").is_file():
        return json.loads((out / "bench.json").read_text())
    done = optimize("bench", *map(str, bundles), "--out", str(out), *flags)
    if done.returncode != 0:
        print(f"  bench: {(done.stderr.strip().splitlines() or ['failed'])[-1]}", flush=True)
        return None
    print(done.stdout[-3000:], flush=True)
    return json.loads((out / "bench.json").read_text())


def frontier_rows(bundles: dict[str, Path], speed: dict | None) -> list[str]:
    """Pruning frontier: fraction, parameters kept, cosine (PyTorch and artifact), speed."""
    ratios = {}
    if speed:
        for cell in speed.get("cells", []):
            if cell.get("batch") == 1 and cell.get("seq_len") == 128 and cell.get("mode") == "fixed":
                ratios[cell["engine"]] = cell.get("speedup")
    rows = ["| bundle | prune | recover | encoder params kept | cosine mean (artifact) | cosine min | neighbour agreement | vs PyTorch (b1, s128) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, folder in bundles.items():
        if not name.startswith(("ort-fp32", "ort-int8")):
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        pruning = manifest.get("pruning") or {}
        parity = manifest["parity"]
        steps = (pruning.get("recovery") or {}).get("steps", 0)
        ratio = ratios.get(name)
        rows.append(
            f"| {name} | {pruning.get('fraction_requested', 0)} | {steps} | {pruning.get('encoder_params_kept_share', 1.0):.0%} | "
            f"{parity['cosine_mean']:.4f} | {parity['cosine_min']:.4f} | {parity['neighbour_agreement']:.3f} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} |"
        )
    return rows


def write_results(bundles: dict[str, Path], speed: dict | None, real: dict | None, base: dict | None, accuracy: dict | None) -> None:
    from optimize.bench import report

    lines = ["# Benchmark results", "", "Written by `python benchmarks/run_suite.py`; ratios are medians of alternating blocks",
             "measured side by side in one run (absolute times drift on shared machines).", ""]
    source = speed or real or base
    if source:
        fp = source["fingerprint"]
        lines += ["## Machine", "", "```", json.dumps(fp, indent=2)[:3000], "```", ""]
    for title, result, png in (("Embedded BERT (all-MiniLM-L6-v2), fixed shapes", speed, "embedded/bench.png"),
                               ("Embedded BERT, real sentence lengths", real, "real-length/bench.png"),
                               ("BERT-base-sized random weights (speed only)", base, "bert-base/bench.png")):
        if result:
            # the plot is copied beside RESULTS.md (benchmarks/out/ is not committed)
            plot = PLOTS / png.replace("/bench.png", ".png")
            PLOTS.mkdir(exist_ok=True)
            if (OUT / "bench" / png).is_file():
                shutil.copyfile(OUT / "bench" / png, plot)
            lines += [f"## {title}", "", report.markdown(result), "", f"![plot]({plot.relative_to(RESULTS.parent)})", ""]
    lines += ["## Pruning frontier", "", *frontier_rows(bundles, speed), ""]
    if accuracy:
        lines += ["## Accuracy: fine-tuned classifier on rotten_tomatoes `test`", "",
                  f"{accuracy['test_texts']} test texts; calibration on `train` only.", "",
                  "| engine | accuracy | precision | recall | F1 |", "| --- | --- | --- | --- | --- |"]
        for name, row in accuracy["rows"].items():
            lines.append(f"| {name} | {row['accuracy']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} |")
        lines.append("")
    lines += ["## Reading these figures", "", *NOTES, ""]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="re-export every bundle and re-run every bench")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shapes")
    args = parser.parse_args(argv)
    rounds = ["--rounds", "3"] if args.quick else ["--rounds", "5"]

    print("exporting the embedded BERT to every target ...", flush=True)
    bundles = export_all(args.fresh)
    runnable = [p for n, p in bundles.items() if not n.startswith("trt-")]
    shapes = ["--batch", "1,8", "--seq", "128"] if args.quick else ["--batch", "1,8,32", "--seq", "32,128,384"]
    speed = bench(runnable, OUT / "bench" / "embedded", *shapes, "--baseline", "torch,ort-default", *rounds)
    real = bench([bundles[n] for n in ("ort-fp32", "ort-int8") if n in bundles], OUT / "bench" / "real-length", "--batch", "8", "--seq", "128", "--real-length", *rounds)

    print("BERT-base-sized random model ...", flush=True)
    base_bundle = BUNDLES / "bert-base-ort-fp32"
    if not (base_bundle / "manifest.json").is_file():
        optimize("export", str(bert_base_random()), "--target", "ort-fp32", "--output", str(base_bundle), "--force", "--no-speed", "--parity-size", "64")
    base = bench([base_bundle], OUT / "bench" / "bert-base", "--batch", "1", "--seq", "128", *rounds) if base_bundle.is_dir() else None

    accuracy = None
    accuracy_json = OUT / "accuracy.json"
    if not args.skip_accuracy:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--json", str(accuracy_json), "--targets",
                        "ort-fp32,ort-int8,ort-fp16,ort-fp32:--prune=0.3:--recover=850:--prune-min-cosine=0.9"])
    if accuracy_json.is_file():
        accuracy = json.loads(accuracy_json.read_text())
    write_results(bundles, speed, real, base, accuracy)


if __name__ == "__main__":
    main()
