"""The benchmark suite: one command, rewrites benchmarks/RESULTS.md from measurement.

    python benchmarks/run_suite.py [--quick] [--results PATH] [--work DIR] [--fresh] [--skip-accuracy | --accuracy JSON]

1. exports the embedded BERT to every target (the TensorRT ones as graphs where TensorRT is
   absent) and the pruning frontier; bundles live in WORK/bundles, reused unless --fresh;
2. `optimize bench` on them, side by side with PyTorch eager fp32 and ONNX Runtime's default
   export, at batch x sequence shapes and at real sentence lengths;
3. a BERT-base-sized random-weight model (12 layers, hidden 768), for speed only;
4. where ort-fp32's time goes (benchmarks/profile_ops.py: ORT's profiler per operator type), and
   ort-fp32's and ort-int8's at real sentence lengths, batch 8 and 32;
5. the GEMM roofline (benchmarks/gemm_roofline.py: single ONNX MatMuls against PyTorch, int8);
6. the accuracy suite (benchmarks/accuracy.py: fine-tuned classifier on Rotten Tomatoes);
7. RESULTS.md: every table and sentence from the measurements above and the bundles'
   manifests (no figure is written by hand here), then benchmarks/NOTES.md, the hand-written
   notes, under their own heading.

`--quick` checks the whole chain in minutes: three bundles (ort-fp32, ort-int8, ort-fp32 at
--prune 0.3), one shape, three rounds, no BERT-base and no accuracy suite; the RESULTS it writes
says which sections it left out (`--accuracy JSON` puts back the accuracy table of an earlier
`python benchmarks/accuracy.py --json JSON` run, which takes over an hour). `--results PATH` writes somewhere other than
benchmarks/RESULTS.md (plots go to PATH's folder/plots). Each step's output is kept in WORK
(benchmarks/out, or benchmarks/out/quick for bench results with --quick) and reused when asked
for again with the same bundles and flags, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "RESULTS.md"
NOTES = BENCHMARKS / "NOTES.md"

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS))

import gemm_roofline  # noqa: E402
import profile_ops  # noqa: E402

#: pruning the embedded BERT by 30% does not hold the default gates on the unseen domain (movie
#: reviews; README, Pruning): the frontier is measured with these looser ones, stated in RESULTS
PRUNED_GATES = ["--prune-min-cosine", "0.85", "--prune-min-agreement", "0.5"]
#: bundle name -> export flags (the target's name alone when empty)
EXPORTS: dict[str, list[str]] = {
    "ort-fp32": [],
    "ort-int8": [],
    "ort-fp16": [],
    "trt-fp16": [],
    "trt-int8": [],
    "ort-int8-qat400": ["--target", "ort-int8", "--qat", "400"],
    "ort-fp32-prune0.15": ["--target", "ort-fp32", "--prune", "0.15", *PRUNED_GATES],
    "ort-fp32-prune0.3": ["--target", "ort-fp32", "--prune", "0.3", *PRUNED_GATES],
    "ort-fp32-prune0.3-recover850": ["--target", "ort-fp32", "--prune", "0.3", "--recover", "850", *PRUNED_GATES],
    "ort-int8-prune0.3": ["--target", "ort-int8", "--prune", "0.3", *PRUNED_GATES],
}
QUICK_EXPORTS = ("ort-fp32", "ort-int8", "ort-fp32-prune0.3")
#: bundles timed at real sentence lengths (batches of real texts, where padding is most of the work)
REAL_LENGTH = ("ort-fp32", "ort-int8", "ort-int8-qat400", "ort-fp32-prune0.3")


def optimize(*args: str) -> subprocess.CompletedProcess:
    print("  $ optimize " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "optimize", *args], capture_output=True, text=True)


def _last_line(done: subprocess.CompletedProcess) -> str:
    return (done.stderr.strip().splitlines() or ["failed"])[-1]


def export_all(names: list[str], bundles_dir: Path, fresh: bool) -> dict[str, Path]:
    bundles = {}
    for name in names:
        folder = bundles_dir / name
        if folder.joinpath("manifest.json").is_file() and not fresh:
            bundles[name] = folder
            continue
        done = optimize("export", "bert", *(EXPORTS[name] or ["--target", name]), "--output", str(folder), "--force", "--no-speed")
        if done.returncode != 0:
            print(f"  {name}: {_last_line(done)}", flush=True)
            continue
        bundles[name] = folder
    return bundles


def _reusable(folder: Path, stem: str, request: dict[str, Any], fresh: bool) -> dict | None:
    """A result written earlier for exactly this request (bundles, flags), else None."""
    result, asked = folder / f"{stem}.json", folder / f"{stem}.request.json"
    if fresh or not result.is_file() or not asked.is_file():
        return None
    if json.loads(asked.read_text()) != request:
        return None
    print(f"  reusing {result}", flush=True)
    return json.loads(result.read_text())


def _remember(folder: Path, stem: str, request: dict[str, Any]) -> None:
    (folder / f"{stem}.request.json").write_text(json.dumps(request, indent=2) + "\n")


def bench(bundles: list[Path], out: Path, flags: list[str], fresh: bool) -> dict | None:
    if not bundles:
        return None
    request = {"bundles": [str(b) for b in bundles], "flags": flags}
    reused = _reusable(out, "bench", request, fresh)
    if reused is not None:
        return reused
    done = optimize("bench", *map(str, bundles), "--out", str(out), *flags)
    if done.returncode != 0:
        print(f"  bench: {_last_line(done)}", flush=True)
        return None
    print(done.stdout[-3000:], flush=True)
    _remember(out, "bench", request)
    return json.loads((out / "bench.json").read_text())


def script(name: str, args: list[str], out: Path, fresh: bool) -> dict | None:
    """Run benchmarks/NAME.py with --json, or reuse its result for the same arguments."""
    out.mkdir(parents=True, exist_ok=True)
    request = {"script": name, "args": args}
    reused = _reusable(out, name, request, fresh)
    if reused is not None:
        return reused
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--json", str(out / f"{name}.json")]
    print("  $ python benchmarks/" + " ".join([f"{name}.py", *args]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {name}: {_last_line(done)}", flush=True)
        return None
    _remember(out, name, request)
    return json.loads((out / f"{name}.json").read_text())


def bert_base_random(cache: Path) -> Path:
    """A BERT-base-sized model with random weights and the embedded tokenizer: for speed only."""
    folder = cache / "bert-base-random"
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


# --- what the manifests say ----------------------------------------------------------------------


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _pass_stats(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next((p.get("stats", {}) for p in manifest.get("passes", {}).get("passes", []) if p["name"] == name), {})


def _model_mb(manifest: dict[str, Any]) -> float:
    return sum(e["bytes"] for n, e in manifest.get("files", {}).items() if n.startswith("model.onnx")) / 1e6


def _speedups(speed: dict | None, batch: int = 1, seq_len: int = 128) -> dict[str, float]:
    return {
        c["engine"]: c["speedup"]
        for c in (speed or {}).get("cells", [])
        if c.get("batch") == batch and c.get("seq_len") == seq_len and c.get("mode") == "fixed" and c.get("speedup")
    }


def _p50(speed: dict | None, engine: str, batch: int = 1, seq_len: int = 128) -> float | None:
    for c in (speed or {}).get("cells", []):
        if c["engine"] == engine and c.get("batch") == batch and c.get("seq_len") == seq_len and c.get("mode") == "fixed":
            return float(c["p50_ms"])
    return None


def _f(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _agreement(parity: dict[str, Any]) -> float | None:
    found = parity.get("neighbour_agreement")
    return found if found is not None else parity.get("label_agreement")


def _unseen(manifest: dict[str, Any]) -> str:
    """The unseen-domain parity (movie reviews) as `cosine mean / min / agreement`."""
    unseen = manifest.get("parity_unseen_domain") or {}
    if not unseen:
        return "-"
    return f"{unseen['cosine_mean']:.4f} / {unseen['cosine_min']:.4f} / {_f(_agreement(unseen), '.3f')}"


def export_rows(bundles: dict[str, Path]) -> list[str]:
    """One row per bundle: parity, size, what the int8 search kept, how long its steps took."""
    rows = [
        "| bundle | target | cosine mean | cosine min | agreement | texts | unseen domain: cosine mean / min / agreement | "
        "model MB | int8 linear layers | calibration s | int8 search s | pruning s | TensorRT engine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, folder in bundles.items():
        manifest = _manifest(folder)
        parity = manifest["parity"]
        int8 = _pass_stats(manifest, "int8")
        linear = int8.get("int8_layers", 0) + int8.get("fp32_layers", 0)
        layers = f"{int8['int8_layers']} of {linear}" if int8 and linear else "-"
        pruning = manifest.get("pruning") or {}
        trt = manifest.get("tensorrt")
        engine = "-" if trt is None else ("built" if trt.get("engine") else "not built here (graph only)")
        rows.append(
            f"| {name} | {manifest['target']} | {parity['cosine_mean']:.5f} | {parity['cosine_min']:.5f} | {_f(_agreement(parity), '.3f')} | "
            f"{parity['samples']} | {_unseen(manifest)} | {_model_mb(manifest):.1f} | {layers} | {_f(int8.get('calibration_seconds'), '.1f')} | "
            f"{_f(int8.get('search_seconds'), '.1f')} | {_f(pruning.get('seconds'), '.0f')} | {engine} |"
        )
    return rows


def frontier_rows(bundles: dict[str, Path], speed: dict | None) -> list[str]:
    """Pruning frontier: parameters kept, PyTorch-side and artifact cosines, speed against PyTorch
    and against the unpruned bundle of the same target, both from the same bench run."""
    ratios = _speedups(speed)
    rows = [
        "| bundle | prune | recover (s) | encoder params kept | PyTorch cosine after cut / fit / recovery | "
        "artifact cosine mean | min | agreement | unseen domain | vs PyTorch (b1, s128) | vs unpruned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, folder in bundles.items():
        manifest = _manifest(folder)
        if manifest["target"] not in ("ort-fp32", "ort-int8"):
            continue
        pruning = manifest.get("pruning") or {}
        parity = manifest["parity"]
        recovery = pruning.get("recovery") or {}
        similarity = pruning.get("pytorch_similarity") or {}
        cosines = " / ".join(_f((similarity.get(k) or {}).get("cosine_mean"), ".4f") for k in ("after_cut", "after_reconstruction", "after_recovery"))
        ratio, unpruned = ratios.get(name), ratios.get(manifest["target"])
        versus = f"{ratio / unpruned:.2f}x" if pruning and ratio and unpruned else "-"
        steps = f"{recovery.get('steps', 0)} ({recovery['seconds']:.0f})" if recovery.get("steps") else "0"
        rows.append(
            f"| {name} | {pruning.get('fraction_requested', 0)} | {steps if pruning else '-'} | "
            f"{pruning.get('encoder_params_kept_share', 1.0):.0%} | {cosines if pruning else '-'} | {parity['cosine_mean']:.4f} | "
            f"{parity['cosine_min']:.4f} | {_f(_agreement(parity), '.3f')} | {_unseen(manifest)} | {_f(ratio, '.2f')}{'x' if ratio else ''} | {versus} |"
        )
    return rows


def reading_lines(bundles: dict[str, Path], speed: dict | None, profile: dict | None, gemm: dict | None) -> list[str]:
    """Sentences that read the tables; each figure computed from this run's data."""
    lines = []
    if speed:
        config = speed["config"]
        lines.append(
            f"- Ratios are medians over {config['rounds']} rounds of alternating blocks in one run "
            f"(`optimize bench`, {config['threads']} threads); on a shared machine the same ratio moves between runs, "
            "so compare bundles within one table, not across runs."
        )
    if "ort-int8" in bundles:
        manifest = _manifest(bundles["ort-int8"])
        int8 = _pass_stats(manifest, "int8")
        storage = _pass_stats(manifest, "weight-storage-int8")
        linear = int8.get("int8_layers", 0) + int8.get("fp32_layers", 0)
        lines.append(
            f"- ort-int8 keeps {int8.get('int8_layers')} of {linear} linear layers int8, the search judging its budget on "
            f"{int8.get('held_back_texts')} held-back texts; the weights of the {storage.get('weights', 0)} layers kept fp32 "
            f"are stored int8 and folded back at load ({_model_mb(manifest):.1f} MB). Calibration took "
            f"{int8.get('calibration_seconds')} s on {int8.get('calibration_texts')} texts, the search {int8.get('search_seconds')} s."
        )
    if gemm:
        square = gemm["rows"][-1]
        lines.append(
            f"- On this CPU ({', '.join(gemm['fingerprint'].get('isa', []))}) the int8 GEMM runs at "
            f"{square['ort-int8']['g_per_s']:.0f} GOPS against {square['ort-fp32']['g_per_s']:.0f} GFLOP/s for fp32 "
            f"({square['int8_vs_fp32']:.2f}x) at {square['m']}^3, and ONNX Runtime's fp32 GEMM "
            f"{square['ort_vs_pytorch']:.2f}x PyTorch's."
        )
        p50 = _p50(speed, "ort-fp32", 1, gemm["tokens"]) if gemm.get("model_ms") else None
        if p50:
            floor = gemm["model_ms"]["ort-fp32"]
            lines.append(
                f"- ort-fp32's GEMMs alone, timed as single MatMuls, take {floor:.1f} ms of its {p50:.1f} ms p50 at b1 "
                f"s{gemm['tokens']} ({floor / p50:.0%}): without doing less arithmetic, the ratio to PyTorch cannot pass "
                f"{(_p50(speed, 'pytorch', 1, gemm['tokens']) or 0) / floor:.2f}x here."
            )
    if profile:
        total = profile["kernels_ms"]
        top = ", ".join("{} at {:.0%}".format(r["op"], r["ms"] / total) for r in profile["op_types"][:3])
        lines.append(
            f"- The profiler puts {top} of ort-fp32's kernel time ({total:.1f} ms of kernels in a "
            f"{_f(profile.get('run_ms'), '.1f')} ms run)."
        )
    for name, folder in bundles.items():
        pruning = _manifest(folder).get("pruning") or {}
        recovery = pruning.get("recovery") or {}
        if recovery.get("steps"):
            similarity = pruning["pytorch_similarity"]
            lines.append(
                f"- {name}: PyTorch-side cosine {similarity['after_cut']['cosine_mean']:.3f} after the cut, "
                f"{similarity['after_reconstruction']['cosine_mean']:.3f} after the least-squares reconstruction, "
                f"{similarity['after_recovery']['cosine_mean']:.3f} after {recovery['steps']} recovery steps "
                f"({recovery['seconds']:.0f} s, {recovery['seconds'] / recovery['steps']:.2f} s a step)."
            )
    for name, folder in bundles.items():
        trt = _manifest(folder).get("tensorrt")
        if trt is not None and not trt.get("engine"):
            lines.append(f"- {name} is a TensorRT-ready graph only: {trt.get('engine_note', 'no engine built')}.")
    return lines


# --- RESULTS.md ----------------------------------------------------------------------------------


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def write_results(
    path: Path,
    command: str,
    bundles: dict[str, Path],
    benches: dict[str, tuple[str, dict | None, Path]],
    profile: dict | None,
    gemm: dict | None,
    accuracy: dict | None,
    left_out: list[str],
    real_profiles: dict[str, dict | None] | None = None,
) -> None:
    from optimize.bench import report

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {today} (commit {_commit()}). Every table and figure down to the "
        "hand-written notes comes from this run's measurements and the manifests of the bundles it exported; "
        "ratios are medians of alternating blocks measured side by side in one run (absolute times drift on "
        "shared machines).",
        "",
    ]
    if left_out:
        lines += ["Not measured in this run: " + "; ".join(left_out) + ".", ""]
    embedded = benches["embedded"][1] if "embedded" in benches else None
    source = next((r for _, r, _ in benches.values() if r), None)
    if source:
        lines += ["## Machine", "", "```", json.dumps(source["fingerprint"], indent=2)[:3000], "```", ""]
    plots = path.parent / "plots"
    for key, (title, result, folder) in benches.items():
        if not result:
            continue
        lines += [f"## {title}", "", report.markdown(result), ""]
        if (folder / "bench.png").is_file():  # the plot beside the results (the work folder is not committed)
            plots.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "bench.png", plots / f"{key}.png")
            lines += [f"![plot]({(plots / f'{key}.png').relative_to(path.parent)})", ""]
    if bundles:
        lines += ["## Bundles", "", "`optimize export bert ...` as listed in benchmarks/run_suite.py, parity on held-out text "
                  "against PyTorch fp32 (from each manifest).", "", *export_rows(bundles), ""]
        lines += ["## Pruning frontier", "", "Pruned bundles are exported with "
                  f"`{' '.join(PRUNED_GATES)}`: the default gates refuse a 30% cut of this encoder on the unseen domain.", "",
                  *frontier_rows(bundles, embedded), ""]
    if profile:
        lines += ["## Where ort-fp32's time goes", "", profile_ops.markdown(profile), ""]
    measured_real = {key: data for key, data in (real_profiles or {}).items() if data}
    if measured_real:
        lines += ["## Where the time goes at real sentence lengths", "",
                  "The batches `optimize bench --real-length` times (held-out sentences and paragraphs, each batch padded "
                  "to its longest); a node's time is its mean over the runs.", ""]
        for data in measured_real.values():
            lines += [profile_ops.markdown(data), ""]
    if gemm:
        lines += ["## GEMM roofline", "", gemm_roofline.markdown(gemm), ""]
    if accuracy:
        lines += ["## Accuracy: fine-tuned classifier on rotten_tomatoes `test`", "",
                  f"{accuracy['test_rows']} test texts, fine-tuned PyTorch fp32 accuracy {accuracy['source_accuracy']:.4f}; "
                  "fine-tuning, calibration and recovery on `train` but its last 1,000 rows, the export's accuracy gate (`--eval-data`) "
                  "on those 1,000 held-back rows (column 'heldback drop'), every other figure on `test`, which no step before "
                  "`optimize eval` read (`python benchmarks/accuracy.py`; speed-up over PyTorch eager at batch 1, sequence 128, "
                  "all bundles in one `optimize bench` run). The frontier's gates are open, so every setting is measured; "
                  "plot: [plots/accuracy-frontier.png](plots/accuracy-frontier.png).", "",
                  "| bundle | flags | accuracy | drop (points) | 95% interval | heldback drop | agreement | vs PyTorch | model MB | int8 linear layers | encoder params kept |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, row in accuracy["rows"].items():
            facts = row.get("bundle") or {}
            layers = f"{facts['int8_layers']} of {facts['linear_layers']}" if facts.get("int8_layers") is not None else "-"
            low, high = row["drop_interval"]
            speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
            lines.append(
                f"| {name} | `{row['flags']}` | {row['accuracy']:.4f} | {row['accuracy_drop']:+.2f} | {low:+.2f} to {high:+.2f} | "
                f"{_f(row.get('heldback_drop'), '+.2f')} | "
                f"{row['agreement']:.4f} | {speedup} | {row['model_mb']:.1f} | {layers} | {_f(facts.get('encoder_params_kept_share'), '.0%')} |"
            )
        lines.append("")
    reading = reading_lines(bundles, embedded, profile, gemm)
    if reading:
        lines += ["## Reading these figures", "", *reading, ""]
    if NOTES.is_file():
        notes = NOTES.read_text().split("\n", 1)[1].lstrip("\n")  # without its own title
        lines += ["## Hand-written notes (benchmarks/NOTES.md, not regenerated)", "", notes.replace("\n## ", "\n### ")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three bundles, one shape, three rounds; no BERT-base, no accuracy")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results (default benchmarks/RESULTS.md)")
    parser.add_argument("--work", type=Path, default=BENCHMARKS / "out", help="bundles and raw results (kept, reused)")
    parser.add_argument("--fresh", action="store_true", help="re-export every bundle and re-run every measurement")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy", type=Path, default=None,
                        help="the JSON of an earlier `python benchmarks/accuracy.py --json PATH` run: its table, instead of running it")
    args = parser.parse_args(argv)
    command = "python benchmarks/run_suite.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    import psutil

    threads = str(psutil.cpu_count(logical=False) or 1)
    work = args.work
    measured = work / "quick" if args.quick else work
    rounds = ["--rounds", "3"] if args.quick else ["--rounds", "5"]
    left_out: list[str] = []

    print("exporting the embedded BERT ...", flush=True)
    names = list(QUICK_EXPORTS) if args.quick else list(EXPORTS)
    bundles = export_all(names, work / "bundles", args.fresh)
    if args.quick:
        left_out.append(f"--quick: only {', '.join(QUICK_EXPORTS)} exported")
    runnable = [p for n, p in bundles.items() if _manifest(p).get("runtime", "onnxruntime") == "onnxruntime"]
    shapes = ["--batch", "1", "--seq", "128"] if args.quick else ["--batch", "1,8,32", "--seq", "32,128,384"]
    benches: dict[str, tuple[str, dict | None, Path]] = {}
    out = measured / "bench" / "embedded"
    flags = [*shapes, "--threads", threads, "--baseline", "torch,ort-default", *rounds]
    benches["embedded"] = ("Embedded BERT (all-MiniLM-L6-v2), fixed shapes", bench(runnable, out, flags, args.fresh), out)
    out = measured / "bench" / "real-length"
    real = [bundles[n] for n in REAL_LENGTH if n in bundles]
    flags = ["--batch", "8" if args.quick else "8,32", "--seq", "128", "--real-length", "--threads", threads, *rounds]
    benches["real-length"] = ("Embedded BERT, real sentence lengths", bench(real, out, flags, args.fresh), out)
    if args.quick:
        left_out.append("--quick: the BERT-base-sized model")
    else:
        print("BERT-base-sized random model ...", flush=True)
        base_bundle = work / "bundles" / "bert-base-ort-fp32"
        if args.fresh or not (base_bundle / "manifest.json").is_file():
            optimize("export", str(bert_base_random(BENCHMARKS / ".cache")), "--target", "ort-fp32", "--output", str(base_bundle),
                     "--force", "--no-speed", "--parity-size", "64")
        out = measured / "bench" / "bert-base"
        flags = ["--batch", "1", "--seq", "128", "--threads", threads, *rounds]
        benches["bert-base"] = ("BERT-base-sized random weights (speed only)",
                                bench([base_bundle] if base_bundle.is_dir() else [], out, flags, args.fresh), out)

    profile = gemm = None
    real_profiles: dict[str, dict | None] = {}
    for name in ("ort-fp32", "ort-int8"):
        for batch in ("8",) if args.quick else ("8", "32"):
            if name in bundles:
                print(f"profiling {name} at real lengths, batch {batch} ...", flush=True)
                real_profiles[f"{name}-b{batch}"] = script(
                    "profile_ops", [str(bundles[name]), "--batch", batch, "--seq", "128", "--threads", threads, "--real-length",
                                    "--runs", "50" if args.quick else "128"], measured / "profile-real" / f"{name}-b{batch}", args.fresh)
    if "ort-fp32" in bundles:
        print("profiling ort-fp32 ...", flush=True)
        profile = script("profile_ops", [str(bundles["ort-fp32"]), "--batch", "1", "--seq", "128", "--threads", threads,
                                         "--runs", "50" if args.quick else "150"], measured / "profile", args.fresh)
        print("GEMM roofline ...", flush=True)
        gemm = script("gemm_roofline", ["--bundle", str(bundles["ort-fp32"]), "--tokens", "128", "--threads", threads,
                                        "--rounds", "3" if args.quick else "7"], measured / "gemm", args.fresh)

    accuracy = None
    if args.accuracy:
        accuracy = json.loads(args.accuracy.read_text())
        left_out.append(f"--accuracy: the accuracy table is not from this run but from {args.accuracy}, written earlier by "
                        "`python benchmarks/accuracy.py --json` (its exports, evaluations and one bench run of its own)")
    elif args.quick or args.skip_accuracy:
        left_out.append(f"{'--quick' if args.quick else '--skip-accuracy'}: the accuracy suite")
    else:
        accuracy_json = work / "accuracy.json"
        if args.fresh or not accuracy_json.is_file():
            subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--json", str(accuracy_json), "--rounds", rounds[1]])
        if accuracy_json.is_file():
            accuracy = json.loads(accuracy_json.read_text())
    write_results(args.results, command, bundles, benches, profile, gemm, accuracy, left_out, real_profiles)


if __name__ == "__main__":
    main()
