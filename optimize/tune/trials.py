"""One trial: a real export of one candidate (its parity or task gate deciding whether it meets
the goal), then timing against PyTorch eager with optimize/bench, then one record.

A trial runs wherever Ray puts it (runner.py); it returns plain data: the record, and the bundle's
files when it met the goal (the driver keeps the best of them in DIR/best)."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize.bundle import folder_bytes
from optimize.config import BenchConfig, ExportJob
from optimize.errors import BundleError, InputError, Interrupted, OptimizeError, ParityError
from optimize.tune.goal import Goal
from optimize.tune.space import Candidate


@dataclass(frozen=True)
class TimingConfig:
    """The timing every trial gets: the same shape, threads and schedule, against the same reference
    (PyTorch eager fp32 of the source model), so the ratios of different trials compare."""

    batch: int = 1
    seq_len: int = 128
    threads: int = 2
    rounds: int = 15
    block_runs: int = 12

    def bench(self) -> BenchConfig:
        return BenchConfig(batches=(self.batch,), seq_lens=(self.seq_len,), threads=self.threads,
                           baselines=("torch",), rounds=self.rounds, block_runs=self.block_runs)


def trial_job(base: ExportJob, candidate: Candidate, goal: Goal, output: Path) -> ExportJob:
    """``base`` (the export flags the user gave) with the candidate's knobs and the goal as its gates.

    A parity goal becomes the tolerances the export itself enforces: the int8 search's budget, and
    the pruned model's floor against the unpruned one. A task goal is the export's accuracy gate;
    parity then only guards against a broken artifact (the cut's cosine floor is low)."""
    prune = dataclasses.replace(base.prune, fraction=candidate.prune, recover_steps=candidate.recover if candidate.prune else 0)
    quant = base.quant
    if candidate.budget is not None:
        quant = dataclasses.replace(quant, min_cosine=candidate.budget)
    evaluation = base.evaluation
    if goal.is_task:
        evaluation = dataclasses.replace(evaluation, path=goal.eval_data, max_accuracy_drop=goal.max_accuracy_drop,
                                         text_column=goal.text_column, label_column=goal.label_column)
        prune = dataclasses.replace(prune, min_cosine=0.5, min_label_agreement=0.0, min_agreement=0.0)
    else:
        if goal.cosine is not None:
            prune = dataclasses.replace(prune, min_cosine=goal.cosine)
        if goal.agreement is not None:
            prune = dataclasses.replace(prune, min_agreement=goal.agreement, min_label_agreement=goal.agreement)
            quant = dataclasses.replace(quant, min_agreement=max(quant.min_agreement, goal.agreement))
    return dataclasses.replace(
        base, target=candidate.target, output=output, force=True, prune=prune, quant=quant, evaluation=evaluation,
        speed=dataclasses.replace(base.speed, enabled=False),  # timed below, by the shared harness
    )


def goal_figures(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parity (and task) figures a trial is judged and plotted by."""
    parity = manifest.get("parity") or {}
    unseen = manifest.get("parity_unseen_domain") or {}
    agreement = parity.get("neighbour_agreement")
    if agreement is None:
        agreement = parity.get("label_agreement")
    figures: dict[str, Any] = {
        "cosine_mean": parity.get("cosine_mean"),
        "cosine_min": parity.get("cosine_min"),
        "agreement": agreement,
        "unseen_cosine_mean": unseen.get("cosine_mean"),
    }
    evaluation = manifest.get("evaluation")
    if evaluation:
        figures["accuracy_drop"] = evaluation.get("accuracy_drop")
        figures["accuracy"] = -float(evaluation["accuracy_drop"])
    else:
        seen = [v for v in (figures["cosine_mean"], figures["unseen_cosine_mean"]) if v is not None]
        figures["accuracy"] = min(seen) if seen else None
    return figures


def meets(figures: dict[str, Any], goal: Goal) -> bool:
    """The goal read again on the figures (the export's gate already enforced it; this guards the mapping)."""
    if goal.is_task:
        return figures.get("accuracy_drop") is not None and float(figures["accuracy_drop"]) <= goal.max_accuracy_drop
    if goal.cosine is not None and (figures["accuracy"] is None or figures["accuracy"] < goal.cosine):
        return False
    return goal.agreement is None or (figures["agreement"] is not None and figures["agreement"] >= goal.agreement)


def time_bundle(bundle: Path, timing: TimingConfig) -> dict[str, Any]:
    """optimize bench's side-by-side measurement of one bundle against PyTorch eager."""
    from optimize.bench.run import run_bench

    result = run_bench([bundle], timing.bench())
    cell = next(c for c in result.cells if c.engine != "pytorch")
    reference = next(c for c in result.cells if c.engine == "pytorch")
    return {"p50_ms": cell.p50_ms, "p90_ms": cell.p90_ms, "speedup": cell.speedup, "throughput": cell.throughput,
            "pytorch_p50_ms": reference.p50_ms, "batch": cell.batch, "seq_len": cell.seq_len, "threads": result.config["threads"]}


def run_trial(candidate: Candidate, base: ExportJob, goal: Goal, timing: TimingConfig, work_root: Path,
              node: str = "") -> tuple[dict[str, Any], dict[str, bytes] | None]:
    """Export, gate, time. Returns (record, bundle files when the goal was met).

    A gate refusal (ParityError, exit 6) is a finished trial that missed the goal; another
    OptimizeError is a finished trial that failed ("error"), marked ``retry`` where the input or
    the node failed rather than the candidate (InputError, BundleError); an interrupt propagates."""
    started = time.monotonic()
    try:
        work_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="trial-", dir=work_root))
    except OSError:  # a node that cannot write the driver's folder works in its own temp
        folder = Path(tempfile.mkdtemp(prefix="optimize-trial-"))
    record: dict[str, Any] = {"candidate": candidate.as_dict(), "key": candidate.key, "node": node, "host": socket.gethostname()}
    files = None
    try:
        from optimize.api import export_model

        outcome = export_model(trial_job(base, candidate, goal, folder / "bundle"))
        manifest = outcome.manifest
        figures = goal_figures(manifest)
        record["figures"] = figures
        record["size_bytes"] = sum(e["bytes"] for n, e in manifest["files"].items() if n.startswith("model.onnx"))
        pruning = manifest.get("pruning") or {}
        if pruning:
            record["encoder_params_kept"] = pruning.get("encoder_params_kept_share")
        if not meets(figures, goal):
            record["status"] = "missed"
            record["error"] = "the figures miss the goal"
        else:
            record.update(time_bundle(outcome.output, timing))
            record["status"] = "met"
            files = folder_bytes(outcome.output)
    except ParityError as exc:
        record["status"] = "missed"
        record["error"] = exc.one_line()
    except Interrupted:
        raise
    except (InputError, BundleError) as exc:
        # the input or the node, not the candidate (a model missing on this node, a full disk):
        # the runner leaves it unrecorded, so a re-run once that is fixed tries it again
        record["status"] = "error"
        record["error"] = exc.one_line()
        record["retry"] = True
    except OptimizeError as exc:
        record["status"] = "error"
        record["error"] = exc.one_line()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record, files
