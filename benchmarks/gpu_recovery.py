"""How far recovery of a 30% cut goes with far more training than two CPU cores afford (issue 20, item 3).

    python benchmarks/gpu_recovery.py MODEL_FOLDER [--steps 12000] [--batch 32] [--every 1000] [--out DIR]

The same pipeline as `optimize export MODEL --prune 0.3 --recover N`: the built-in calibration
corpus, the least-squares fit (on the CPU), then `recover.distil` with its loss and schedule, here on
a CUDA device, with both parity sets (held-out calibration text, unseen-domain reviews) measured at
checkpoints of the one schedule. Writes OUT/gpu_recovery.json; prints one line per checkpoint.
--budget-s stops the training early (the figures so far are kept) so the script ends inside a lease.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from optimize.api import parity_batches
from optimize.calibration.batches import length_bucketed_batches
from optimize.calibration.corpus import calibration_texts
from optimize.config import CalibrationConfig, ExportJob, PruneConfig
from optimize.exporter.resolve import resolve
from optimize.pruning import RECOVERY_TEXTS, _outputs, _similarity, prune  # the export's own measures
from optimize.pruning.recover import distil
from optimize.training import describe, training_device


class _OutOfTime(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = training_device("auto")
    record: dict = {"device": describe(device), "args": {k: str(v) for k, v in vars(args).items()}}

    def save() -> None:
        (args.out / "gpu_recovery.json").write_text(json.dumps(record, indent=1))

    started = time.perf_counter()
    loaded = resolve(args.model)
    job = ExportJob(model=args.model, target="ort-fp32", output=args.out / "unused")
    sets = {p.texts.key: p.batches for p in parity_batches(loaded, job)}
    calibration = CalibrationConfig()
    outcome = prune(loaded, PruneConfig(fraction=args.fraction), calibration, sets, progress=lambda line: print(f"  {line}", flush=True))
    record["fit"] = outcome.report["pytorch_similarity"]
    record["fit_seconds"] = round(time.perf_counter() - started, 1)
    print(f"fit done in {record['fit_seconds']} s: {json.dumps(record['fit']['after_reconstruction'])}", flush=True)
    save()

    student, teacher = outcome.loaded.module, loaded.module
    teacher.to(device)
    reference = {key: _outputs(loaded, teacher, batches) for key, batches in sets.items()}
    texts = calibration_texts(None, RECOVERY_TEXTS, calibration.text_column)
    seq_len = min(calibration.seq_len, loaded.max_sequence)
    record["recovery_texts"] = len(texts)
    record["checkpoints"] = []

    def batches(epoch: int):
        return length_bucketed_batches(loaded.tokenizer, texts, loaded.input_names, batch_size=args.batch, seq_len=seq_len, seed=epoch)

    train_started = time.perf_counter()

    def checkpoint(step: int, loss: float) -> None:
        if step % args.every and step != args.steps:
            return
        student.eval()
        figures = _similarity(loaded, reference, student, sets)
        student.train()
        row = {"step": step, "loss": round(loss, 5), "seconds": round(time.perf_counter() - train_started, 1), **figures}
        record["checkpoints"].append(row)
        save()
        print(json.dumps(row), flush=True)
        if time.perf_counter() - started > args.budget_s:
            raise _OutOfTime

    try:
        distil(student, teacher, batches, args.steps, classifier=False, layer_map=outcome.report["layers_kept"], progress=checkpoint, device=device)
        record["finished"] = True
    except _OutOfTime:
        record["finished"] = False
        print("stopped early: out of the time budget", flush=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    save()


if __name__ == "__main__":
    main()
