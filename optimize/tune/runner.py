"""The search driver on Ray: one trial worker (an actor) per node, so each node exports and times
one candidate at a time and no export disturbs another trial's timing; the driver picks the next
candidate from what has finished (space.decide), appends each finished trial to the store and
keeps the best bundle in DIR/best.

With no address, Ray starts a local runtime by itself (no set-up); with an address, tune joins
that cluster and puts a worker on every live node that matches --node-label/--node-resource and
has the CPUs a trial asks for."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimize import bundle as bundles
from optimize import ray_runtime
from optimize.config import ExportJob
from optimize.errors import INTERRUPTED, InputError, Interrupted
from optimize.tune import frontier
from optimize.tune.goal import Goal
from optimize.tune.space import (
    DEFAULT_PRUNE,
    DEFAULT_RECOVER,
    DEFAULT_TARGETS,
    Candidate,
    Decision,
    best_record,
    build_space,
    decide,
)
from optimize.tune.store import TrialStore
from optimize.tune.trials import TimingConfig, run_trial

WORK_FOLDER = ".work"  # trials' temporary bundles, beside the store; swept at every start
BEST_FOLDER = "best"
BEST_RECORD = "best.json"


@dataclass(frozen=True)
class ClusterConfig:
    """Where trials run. ``address`` None: a local runtime of ``local_cpus`` CPUs (default: all)."""

    address: str | None = None
    local_cpus: int | None = None
    trial_cpus: float = 1.0
    trial_memory_gb: float | None = None
    node_labels: tuple[tuple[str, str], ...] = ()
    node_resource: str | None = None


@dataclass(frozen=True)
class TuneConfig:
    base: ExportJob  # the export flags every trial starts from (model, calibration, parity text, ...)
    output: Path
    goal: Goal = field(default_factory=Goal)
    objective: str = "latency"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    prunes: tuple[float, ...] = DEFAULT_PRUNE
    recovers: tuple[int, ...] = DEFAULT_RECOVER
    trials: int | None = None  # new trials this run may start (None: as many as the search wants)
    time_limit_s: float | None = 40 * 60.0  # no trial starts that is expected to end past it
    timing: TimingConfig = field(default_factory=TimingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def context(self) -> dict[str, Any]:
        """What a trial's figures depend on besides its candidate: the store's compatibility key."""
        b = self.base
        return {
            "model": b.model, "task": b.export.task, "seq_len": b.export.seq_len, "goal": self.goal.describe(),
            "calibration": str(b.calibration.path or ""), "parity": [str(b.parity.path or ""), b.parity.size, b.parity.unseen_size],
            "timing": [self.timing.batch, self.timing.seq_len, self.timing.threads],
        }


@dataclass
class TuneResult:
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    skipped: list[Decision]
    new_trials: int
    seconds: float
    frontier_md: Path
    frontier_png: Path
    nodes: list[str]


class Reporter:
    def note(self, line: str) -> None: ...


class _TrialWorker:
    """Lives on one node; runs that node's trials one after another."""

    def __init__(self, base: ExportJob, goal: Goal, timing: TimingConfig, work_root: str) -> None:
        import ray
        import torch

        self.args = (base, goal, timing, Path(work_root))
        self.node = ray.get_runtime_context().get_node_id()
        # Ray caps a worker's OMP threads at its CPU request; the worker has the node to itself
        torch.set_num_threads(max(1, os.cpu_count() or 1))

    def node_id(self) -> str:
        return self.node

    def run(self, candidate: Candidate) -> tuple[dict[str, Any], dict[str, bytes] | None]:
        base, goal, timing, work_root = self.args
        return run_trial(candidate, base, goal, timing, work_root, node=self.node)


def start_ray(cluster: ClusterConfig) -> None:
    if cluster.address:
        ray_runtime.join("optimize tune", cluster.address, or_local=True)
    else:
        ray_runtime.start_local("optimize tune", cluster.local_cpus or os.cpu_count() or 1)


def pick_nodes(cluster: ClusterConfig) -> list[str]:
    """Live nodes that match the label and resource filters and can hold one trial worker."""
    chosen = ray_runtime.nodes_with(cluster.trial_cpus, cluster.node_labels, cluster.node_resource)
    if not chosen:
        wanted = [f"{cluster.trial_cpus:g} CPUs"] + [f"label {k}={v}" for k, v in cluster.node_labels]
        if cluster.node_resource:
            wanted.append(f"resource {cluster.node_resource}")
        raise InputError(f"no live Ray node has {', '.join(wanted)}", "check the cluster (`ray status`), --node-label, --node-resource and --trial-cpus")
    return chosen


def _workers(cfg: TuneConfig, nodes: list[str], work_root: Path) -> list[Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(_TrialWorker)
    options: dict[str, Any] = {"num_cpus": cfg.cluster.trial_cpus, "max_restarts": 0}
    if cfg.cluster.trial_memory_gb:
        options["memory"] = int(cfg.cluster.trial_memory_gb * 2**30)
    return [
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), **options)
        .remote(cfg.base, cfg.goal, cfg.timing, str(work_root))
        for node in nodes
    ]


def estimated_seconds(candidate: Candidate, records: list[dict[str, Any]]) -> float:
    """How long ``candidate`` should take, from finished trials of the same kind (cut or not,
    recovery steps, int8 or not); 0 where nothing alike has finished (it is tried)."""
    def kind(c: Candidate) -> tuple:
        return (c.prune > 0, c.recover, c.target == "ort-int8")

    alike = [float(r["seconds"]) for r in records if kind(Candidate.from_dict(r["candidate"])) == kind(candidate)]
    if alike:
        return max(alike)
    if candidate.recover:  # the cut without recovery, plus the steps (~0.65 s each on 2 cores)
        return estimated_seconds(dataclasses.replace(candidate, recover=0), records) + 0.7 * candidate.recover
    if candidate.prune:  # the cut's least-squares fit: about 3 exports' time (README, Pruning)
        return 3.0 * max([float(r["seconds"]) for r in records if float(r["candidate"]["prune"]) == 0.0] or [0.0])
    return 0.0


def _summary(record: dict[str, Any]) -> str:
    label = Candidate.from_dict(record["candidate"]).label
    figures = record.get("figures") or {}
    acc = f", accuracy figure {figures['accuracy']:.4f}" if figures.get("accuracy") is not None else ""
    if record["status"] == "met":
        return (f"trial {label}: met the goal{acc}; {record['speedup']:.2f}x PyTorch eager ({record['p50_ms']:.2f} ms), "
                f"{record['size_bytes'] / 1e6:.1f} MB, {record['seconds']:.0f} s on node {record['node'][:8]}")
    return f"trial {label}: {record['status']}{acc} ({record.get('error', '')[:160]}), {record['seconds']:.0f} s on node {record['node'][:8]}"


def _write_best(output: Path, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """The new best bundle, staged beside DIR/best and swapped in whole (optimize/bundle.py)."""
    with bundles.staged(output / BEST_FOLDER, force=True) as staging:
        bundles.write_folder_bytes(staging, files)
    tmp = output / f".{BEST_RECORD}.tmp"
    tmp.write_text(json.dumps({k: v for k, v in record.items() if k != "context"}, indent=2, sort_keys=True) + "\n")
    tmp.replace(output / BEST_RECORD)


def _without_cuts_the_model_cannot_take(space: list[Candidate], cfg: TuneConfig, reporter: Reporter) -> list[Candidate]:
    """``space`` less its pruned candidates where the model cannot be pruned: a family with no
    pruning layout (or a variant the layout refuses) would have every pruned trial fail on the
    same error. Read from the model's config.json where this machine has it; on a cluster the
    model may live on the nodes alone, and their trials then say it."""
    from optimize.architectures import pruning_refusal
    from optimize.exporter.resolve import locate, read_config

    cuts = sorted({c.prune for c in space if c.prune > 0})
    if not cuts:
        return space
    try:
        path, _ = locate(cfg.base.model)
    except InputError:
        if cfg.cluster.address:
            return space
        raise
    config = read_config(path)
    refusal = pruning_refusal(str(config.get("model_type", "")), config)
    if refusal is None:
        return space
    unpruned = [c for c in space if c.prune == 0]
    if not unpruned:
        raise InputError(refusal.problem, "pass --prune 0 (unpruned candidates only)")
    reporter.note(f"not tried: --prune {','.join(f'{p:g}' for p in cuts)} ({refusal.problem})")
    return unpruned


def tune(cfg: TuneConfig, reporter: Reporter | None = None) -> TuneResult:
    """Run the search to its end (or --trials, or the time limit); resumable from DIR/trials.jsonl."""
    reporter = reporter or Reporter()
    started = time.monotonic()
    output = Path(os.path.abspath(cfg.output))
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file", "pass a folder")
    space = _without_cuts_the_model_cannot_take(build_space(cfg.targets, cfg.prunes, cfg.recovers, cfg.goal), cfg, reporter)
    store = TrialStore(output, cfg.context())
    work_root = output / WORK_FOLDER
    shutil.rmtree(work_root, ignore_errors=True)  # what an interrupted run left half-written
    # said once Ray is up (or nothing is left to run): a cluster that cannot be joined is the one line
    resuming = f"resuming: {len(store.records)} finished trials in {store.path} are not redone" if store.records else None
    #: candidates not run in this run, by key: (verdict, why); not recorded, so a re-run tries them
    held_back: dict[str, tuple[str, str]] = {}
    in_flight: dict[Any, tuple[Candidate, Any]] = {}
    new_trials = 0
    nodes: list[str] = []
    ray_started = False

    def runnable() -> list[Candidate]:
        decisions = decide(space, store.records, cfg.objective, [c.key for c, _ in in_flight.values()])
        return [d.candidate for d in decisions if d.verdict == "run" and d.candidate.key not in held_back]

    def fits(candidate: Candidate) -> bool:
        if cfg.time_limit_s is None:
            return True
        elapsed = time.monotonic() - started
        needed = estimated_seconds(candidate, list(store.records.values()))
        if elapsed + needed > cfg.time_limit_s:
            held_back[candidate.key] = "time-limit", f"expected to take {needed:.0f} s with {max(0.0, cfg.time_limit_s - elapsed):.0f} s of --time-limit left"
            return False
        return True

    try:
        idle: list[Any] = []
        while True:
            queue = runnable()
            if queue and not ray_started and (cfg.trials is None or new_trials < cfg.trials):
                start_ray(cfg.cluster)
                ray_started = True
                nodes = pick_nodes(cfg.cluster)
                idle = _workers(cfg, nodes, work_root)
                reporter.note(f"ray: {len(nodes)} node(s) with a trial worker each ({'joined ' + cfg.cluster.address if cfg.cluster.address else 'local runtime'})")
            if resuming:
                reporter.note(resuming)
                resuming = None
            while idle and queue and (cfg.trials is None or new_trials + len(in_flight) < cfg.trials):
                candidate = queue.pop(0)
                if not fits(candidate):
                    continue
                worker = idle.pop(0)
                in_flight[worker.run.remote(candidate)] = (candidate, worker)
                reporter.note(f"trial {candidate.label}: started")
                queue = [c for c in runnable() if c.key not in {k.key for k, _ in in_flight.values()}]
            if not in_flight:
                break
            import ray

            done, _ = ray.wait(list(in_flight), num_returns=1)
            candidate, worker = in_flight.pop(done[0])
            idle.append(worker)
            try:
                record, files = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died or a bug: a finished, failed trial
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record = {"candidate": candidate.as_dict(), "key": candidate.key, "node": "", "status": "error",
                          "error": f"internal error: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}", "seconds": 0.0}
                files = None
            new_trials += 1
            if record.get("retry"):  # the node or the input failed, not the candidate: not recorded
                held_back[candidate.key] = "failed", f"{record['error']} (not recorded: a re-run tries it again)"
                line = f"trial {candidate.label}: failed on node {record['node'][:8]}: {record['error'][:200]}; not recorded, a re-run tries it again"
            else:
                if files is not None:
                    best = best_record([*store.records.values(), record], cfg.objective)
                    if best is record:
                        _write_best(output, record, files)
                store.add(record)
                line = _summary(record)
            reporter.note(line)
            _write_frontier(cfg, store, output, space, held_back, nodes)
    except KeyboardInterrupt:
        best_line = f"{output / BEST_FOLDER} holds the best so far (whole)" if (output / BEST_FOLDER).is_dir() else "no bundle was written"
        raise Interrupted(
            f"{INTERRUPTED.split(';')[0]}; {len(store.records)} finished trials kept in {store.path}, "
            f"{best_line}; run the same command to resume"
        ) from None
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        shutil.rmtree(work_root, ignore_errors=True)
    md, png, skipped = _write_frontier(cfg, store, output, space, held_back, nodes)
    records = list(store.records.values())
    return TuneResult(records, best_record(records, cfg.objective), skipped, new_trials, time.monotonic() - started, md, png, nodes)  # type: ignore[arg-type]


def _write_frontier(cfg: TuneConfig, store: TrialStore, output: Path, space: list[Candidate], held_back: dict[str, tuple[str, str]], nodes: list[str]):
    decisions = decide(space, store.records, cfg.objective)
    skipped = [
        Decision(d.candidate, *held_back[d.candidate.key]) if d.verdict == "run" and d.candidate.key in held_back
        else (Decision(d.candidate, "not run", "--trials reached") if d.verdict == "run" else d)
        for d in decisions if d.verdict not in ("done", "in-flight")
    ]
    from optimize.bench.hardware import fingerprint

    hw = fingerprint()
    header = [f"- model: {cfg.base.model}; {len(store.records)} trials; timing batch {cfg.timing.batch}, sequence {cfg.timing.seq_len}, "
              f"{cfg.timing.threads} threads, {cfg.timing.rounds} rounds of alternating blocks against PyTorch eager fp32",
              f"- driver machine: {hw.get('cpu', '?')}"]
    output.mkdir(parents=True, exist_ok=True)
    md, png = frontier.write(output, list(store.records.values()), cfg.objective, cfg.goal.describe(), skipped, header)
    return md, png, skipped
