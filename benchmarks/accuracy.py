"""The accuracy suite: fine-tune the embedded BERT on Rotten Tomatoes, compress it, judge it with `optimize eval`.

    python benchmarks/accuracy.py [--specs NAME=FLAGS;...] [--data ../shared/data/rotten_tomatoes.csv] [--json OUT]

1. fine-tunes all-MiniLM-L6-v2 on the `train` split but its last 1,000 rows (cached in benchmarks/.cache/,
   ~15 minutes on 2 cores once);
2. writes the data files a user would have: `train.csv` (calibration, pruning fit and recovery text:
   every `train` row but the last 1,000), `heldback.csv` (those 1,000 labelled rows: the export's
   accuracy gate, `--eval-data`) and `test.csv` (the 2,000 `test` rows, read by nothing but `optimize eval`);
3. exports the classifier once per spec with the CLI, as a user would;
4. `optimize eval BUNDLE --data test.csv` on each: accuracy of the artifact and of its source model;
5. `optimize bench` of every bundle side by side with PyTorch (batch 1, sequence 128): speed;
6. the frontier (test accuracy against speed) as a table and a plot.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rotten_tomatoes.csv"
LABELS = {"negative": 0, "positive": 1}
#: labelled `train` rows kept back from calibration for the export's accuracy gate
HELD_BACK = 1000

#: recovery steps per pruning depth: deeper pruning has more to win back
RECOVER_STEPS = {0.3: 600, 0.5: 600, 0.6: 900}


def frontier() -> dict[str, list[str]]:
    """name -> export flags: fp32 and int8 at 0, 30, 50 and 60% pruning, each pruned depth with and without recovery.

    Each also gets --calibration train.csv --eval-data heldback.csv. Ordered so that an interrupted run
    (exports are kept and reused) has the int8 line first, then fp32's."""
    specs: dict[str, list[str]] = {"fp32": ["--target", "ort-fp32"], "int8": ["--target", "ort-int8"]}
    for precision in ("int8", "fp32"):
        for recovered in (False, True):
            for fraction, steps in RECOVER_STEPS.items():
                pruned = ["--target", f"ort-{precision}", "--prune", str(fraction)]
                if recovered:
                    specs[f"{precision}-prune{fraction}-recover{steps}"] = [*pruned, "--recover", str(steps)]
                else:
                    specs[f"{precision}-prune{fraction}"] = pruned
    return specs


#: The frontier measures every point, the ones a gate would refuse too: a pruned classifier is judged on
#: the task, and how much a setting loses is what the frontier is for. `--max-accuracy-drop 1.0` turns
#: the gate back on (refused settings are then listed, not measured).
OPEN_GATES = ["--prune-min-cosine", "0.01", "--prune-min-agreement", "0"]


def load_rows(path: Path, split: str) -> tuple[list[str], list[str]]:
    if not path.is_file():
        sys.exit(f"error: labelled data {path} not found; pass --data PATH to rotten_tomatoes.csv")
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == split:
                texts.append(row["text"])
                labels.append(row["label"])
    return texts, labels


def write_rows(path: Path, texts: list[str], labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path


def fine_tune(data: Path, folder: Path, epochs: int = 3, batch_size: int = 32, seed: int = 0) -> Path:
    """Fine-tune all-MiniLM-L6-v2 for 2-way sentiment on the `train` rows but the last HELD_BACK
    (held back, as a user holds back a validation set: the export's accuracy gate reads them, and
    a teacher that had memorised them would make every student look worse on them than on unseen
    text); cached in ``folder``."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    from optimize.exporter.resolve import embedded_model_path

    torch.manual_seed(seed)
    base = embedded_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id=LABELS
    )
    texts, names = load_rows(data, "train")
    texts, names = texts[:-HELD_BACK], names[:-HELD_BACK]
    labels = np.array([LABELS[n] for n in names])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    rng = np.random.default_rng(seed)
    model.train()
    started, step = time.time(), 0
    for epoch in range(epochs):
        order = rng.permutation(len(texts))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=128, return_tensors="pt")
            loss = model(**batch, labels=torch.from_numpy(labels[index])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 50 == 0:
                print(f"  fine-tune epoch {epoch + 1} step {step}/{steps} loss {loss.item():.3f} ({time.time() - started:.0f}s)", flush=True)
    model.eval()
    staging = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def data_files(data: Path, out: Path) -> dict[str, Path]:
    """train.csv, heldback.csv and test.csv, as a user with this data would have them."""
    train_texts, train_labels = load_rows(data, "train")
    test_texts, test_labels = load_rows(data, "test")
    return {
        "train": write_rows(out / "train.csv", train_texts[:-HELD_BACK], train_labels[:-HELD_BACK]),
        "heldback": write_rows(out / "heldback.csv", train_texts[-HELD_BACK:], train_labels[-HELD_BACK:]),
        "test": write_rows(out / "test.csv", test_texts, test_labels),
    }


def optimize(*args: str) -> subprocess.CompletedProcess:
    print("  $ optimize " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "optimize", *args], capture_output=True, text=True)


def export(classifier: Path, name: str, flags: list[str], files: dict[str, Path], out: Path, max_drop: float) -> Path | None:
    bundle = out / name
    if (bundle / "manifest.json").is_file():
        return bundle
    extra = OPEN_GATES if "--prune" in flags or "--drop-layers" in flags else []
    done = optimize(
        "export", str(classifier), *flags, *extra, "--output", str(bundle), "--force", "--no-speed",
        "--calibration", str(files["train"]), "--eval-data", str(files["heldback"]), "--max-accuracy-drop", str(max_drop),
    )
    if done.returncode != 0:
        print(f"  {name}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}", flush=True)
        return None
    return bundle


def bundle_facts(bundle: Path) -> dict:
    """What the artifact is, from its manifest: int8 layers, pruning kept share, recovery steps."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    passes = {p["name"]: p.get("stats", {}) for p in manifest.get("passes", {}).get("passes", [])}
    int8 = passes.get("int8") or {}
    pruning = manifest.get("pruning") or {}
    return {
        "target": manifest.get("target"),
        "int8_layers": int8.get("int8_layers"),
        "linear_layers": (int8["int8_layers"] + int8.get("fp32_layers", 0)) if int8 else None,
        "encoder_params_kept_share": pruning.get("encoder_params_kept_share"),
        "recover_steps": (pruning.get("recovery") or {}).get("steps", 0) if pruning else None,
    }


def evaluate(bundle: Path, test: Path) -> dict:
    report = bundle.parent / f"{bundle.name}.eval.json"  # not with_suffix: "int8-prune0.5" has the suffix ".5"
    if not report.is_file():
        done = optimize("eval", str(bundle), "--data", str(test), "--json", str(report))
        if done.returncode != 0:
            raise SystemExit(f"eval of {bundle} failed: {done.stderr.strip()}")
        print(done.stdout, flush=True)
    return json.loads(report.read_text())


def speed(bundles: dict[str, Path], out: Path, rounds: int) -> dict[str, float]:
    """Each bundle's speed-up over PyTorch eager at batch 1, sequence 128, all in one run."""
    result = out / "bench" / "bench.json"
    if not result.is_file():
        done = optimize("bench", *map(str, bundles.values()), "--batch", "1", "--seq", "128", "--threads", "2",
                        "--rounds", str(rounds), "--out", str(result.parent))
        if done.returncode != 0:
            raise SystemExit(f"bench failed: {done.stderr.strip()}")
        print(done.stdout, flush=True)
    cells = json.loads(result.read_text())["cells"]
    by_engine = {c["engine"]: c for c in cells}
    return {name: by_engine[bundle.name]["speedup"] for name, bundle in bundles.items() if bundle.name in by_engine}


def _series(name: str) -> tuple[str, str]:
    """(precision, recovery) of a frontier name such as int8-prune0.5-recover600."""
    return ("int8" if name.startswith("int8") else "fp32"), ("recovered" if "-recover" in name else "not recovered")


def plot(rows: dict[str, dict], source_accuracy: float, path: Path) -> None:
    """Test accuracy against speed-up; one line per precision and recovery, through its pruning depths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"fp32": "tab:orange", "int8": "tab:blue"}
    styles = {"recovered": "-", "not recovered": ":"}
    figure, axis = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for name, row in rows.items():
        if row.get("speedup") is None:
            continue
        precision, recovery = _series(name)
        # the unpruned point is where both of its precision's lines start
        keys = [(precision, "not recovered"), (precision, "recovered")] if "prune" not in name else [(precision, recovery)]
        for key in keys:
            series.setdefault(key, []).append((row["speedup"], row["accuracy"] * 100, name))
    for (precision, recovery), points in sorted(series.items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], styles[recovery], marker="o", color=colours[precision],
                  label=f"{precision}, {recovery}")
    for name, row in rows.items():
        if row.get("speedup") is not None:
            axis.annotate(name.removeprefix("fp32-").removeprefix("int8-") if "prune" in name else name,
                          (row["speedup"], row["accuracy"] * 100), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.axhline(source_accuracy * 100, color="gray", linestyle="--", label="fine-tuned PyTorch fp32")
    axis.axhline(source_accuracy * 100 - 1.0, color="gray", linestyle=(0, (1, 4)), label="1 point below")
    axis.set_xlabel("speed-up over PyTorch eager fp32 (batch 1, sequence 128, 2 threads)")
    axis.set_ylabel("rotten_tomatoes test accuracy (%)")
    axis.set_title("Pruning 0 / 30 / 50 / 60% of the encoder, with and without recovery (distillation on train text)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--specs", default="", help="NAME=FLAGS;... (flags space-separated); default: the frontier")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "accuracy")
    parser.add_argument("--max-accuracy-drop", type=float, default=100.0,
                        help="the export's gate on heldback.csv (default: open, every point measured)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "plots" / "accuracy-frontier.png")
    args = parser.parse_args(argv)

    specs = frontier()
    if args.specs:
        specs = {name: flags.split() for name, flags in (s.split("=", 1) for s in args.specs.split(";") if s.strip())}
    print("fine-tuning (cached after the first run) ...", flush=True)
    classifier = fine_tune(args.data, CACHE / "minilm-rotten-tomatoes-heldback")
    files = data_files(args.data, args.out)
    bundles = {name: b for name, flags in specs.items() if (b := export(classifier, name, flags, files, args.out, args.max_accuracy_drop))}
    reports = {name: evaluate(bundle, files["test"]) for name, bundle in bundles.items()}
    speedups = speed(bundles, args.out, args.rounds) if bundles else {}
    source_accuracy = next(iter(reports.values()))["source"]["accuracy"] if reports else float("nan")
    rows = {}
    for name, report in reports.items():
        manifest = json.loads((bundles[name] / "manifest.json").read_text())
        rows[name] = {
            "flags": " ".join(specs[name]),
            "accuracy": report["artifact"]["accuracy"],
            "accuracy_drop": report["accuracy_drop"],
            "drop_interval": report["drop_interval"],
            "agreement": report["agreement"],
            "heldback_drop": (manifest.get("evaluation") or {}).get("accuracy_drop"),
            "speedup": speedups.get(name),
            "model_mb": round((bundles[name] / "model.onnx").stat().st_size / 1e6, 1),
            "bundle": bundle_facts(bundles[name]),
        }
    print(f"\nrotten_tomatoes test ({reports and next(iter(reports.values()))['rows']} rows); fine-tuned PyTorch fp32 accuracy {source_accuracy:.4f}")
    print(f"{'bundle':26s} {'accuracy':>9s} {'drop (pts)':>11s} {'95% interval':>16s} {'heldback drop':>13s} {'vs PyTorch':>10s} {'MB':>6s}")
    for name, row in rows.items():
        low, high = row["drop_interval"]
        ratio = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
        heldback = f"{row['heldback_drop']:+.2f}" if row["heldback_drop"] is not None else "-"
        print(f"{name:26s} {row['accuracy']:9.4f} {row['accuracy_drop']:+11.2f} {f'{low:+.2f} to {high:+.2f}':>16s} {heldback:>13s} {ratio:>10s} {row['model_mb']:6.1f}")
    if rows:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, source_accuracy, args.plot)
    result = {"test_rows": reports and next(iter(reports.values()))["rows"], "source_accuracy": source_accuracy, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
