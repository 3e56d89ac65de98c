"""``optimize bench``: every engine at every shape, in alternating blocks, with ratios."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.bench.engines import Engine, baseline_engine, bundle_engine, source_of
from optimize.bench.harness import Schedule, alternate
from optimize.bench.hardware import fingerprint
from optimize.bench.workload import cycling, fixed_shape, real_length
from optimize.bundle import Bundle, read_bundle
from optimize.config import BenchConfig, EngineConfig
from optimize.errors import InputError

SCHEMA = "optimize-bench/1"


@dataclass
class Cell:
    engine: str
    batch: int
    seq_len: int
    mode: str  # "fixed" | "real-length"
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the median latency
    speedup: float | None  # vs the reference engine, median over rounds of block-median ratios
    reference: str | None
    rss_mb: float | None
    file_mb: float | None


@dataclass
class BenchResult:
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "cells": [asdict(c) for c in self.cells],
            "notes": self.notes,
        }


def _threads(cfg: BenchConfig) -> int:
    if cfg.threads > 0:
        return cfg.threads
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name}-{index}", index + 1
    taken.add(candidate)
    return candidate


def build_engines(bundle_paths: list[Path], cfg: BenchConfig, threads: int, notes: list[str]) -> tuple[list[Engine], dict[str, float], Any]:
    """Engines for the bundles, then the baselines of their (first) source model."""
    engines: list[Engine] = []
    memory: dict[str, float] = {}
    names: set[str] = set()
    bundles = [read_bundle(p) for p in bundle_paths]
    for bundle in bundles:
        before = _rss_mb()
        engine = bundle_engine(bundle, threads, _unique(bundle.path.name, names))
        memory[engine.name] = _rss_mb() - before
        engines.append(engine)
    tokenizer_source = None
    wanted = [b for b in cfg.baselines if b != "none"]
    loaded = None
    before_source = _rss_mb()
    try:
        loaded = source_of(bundles[0])
        tokenizer_source = loaded.tokenizer
    except InputError as exc:
        if wanted:
            notes.append(f"baselines skipped: {exc.problem}")
        wanted = []
    for name in wanted:
        before = before_source if name == "torch" else _rss_mb()  # the PyTorch model's weights count for it
        engine = baseline_engine(name, loaded, threads)
        engine.name = _unique(engine.name, names)
        memory[engine.name] = _rss_mb() - before
        engines.append(engine)
    if tokenizer_source is None:
        from transformers import AutoTokenizer

        tokenizer_source = AutoTokenizer.from_pretrained(bundles[0].path)
    return engines, memory, tokenizer_source


def measure_cell(
    engines: list[Engine],
    workload: list,
    batch: int,
    seq_len: int,
    mode: str,
    schedule: Schedule,
    memory: dict[str, float],
    on_round: Callable[[int], None] | None = None,
) -> list[Cell]:
    calls = {e.name: cycling(e.run, workload) for e in engines}
    timing = alternate(calls, schedule, on_round)
    reference = "pytorch" if "pytorch" in calls else engines[0].name
    cells = []
    for engine in engines:
        samples = np.array(timing.samples[engine.name]) * 1e3
        p50 = float(np.percentile(samples, 50))
        mean_rows = float(np.mean([next(iter(f.values())).shape[0] for f in workload]))
        cells.append(
            Cell(
                engine=engine.name,
                batch=batch,
                seq_len=seq_len,
                mode=mode,
                p50_ms=p50,
                p90_ms=float(np.percentile(samples, 90)),
                p99_ms=float(np.percentile(samples, 99)),
                mean_ms=float(samples.mean()),
                throughput=mean_rows / (p50 / 1e3),
                speedup=None if engine.name == reference else timing.ratio(reference, engine.name),
                reference=None if engine.name == reference else reference,
                rss_mb=round(memory.get(engine.name, 0.0), 1) if engine.name in memory else None,
                file_mb=round(engine.file_bytes / 1e6, 2) if engine.file_bytes else None,
            )
        )
    return cells


def run_bench(
    bundle_paths: list[Path],
    cfg: BenchConfig,
    on_cell: Callable[[BenchResult], None] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> BenchResult:
    """Measure every shape; after each finished cell ``on_cell`` gets the result so far."""
    if not bundle_paths:
        raise InputError("no bundle given", "pass one or more bundle folders written by `optimize export`")
    if any(b < 1 for b in cfg.batches) or any(s < 1 for s in cfg.seq_lens):
        raise InputError("--batch and --seq values must be positive", "pass e.g. --batch 1,8 --seq 128")
    threads = _threads(cfg)
    notes: list[str] = []
    profiles = engine_profiles([read_bundle(p) for p in bundle_paths])
    cells = plan_cells(cfg.batches, cfg.seq_lens, profiles, notes)
    engines, memory, tokenizer = build_engines(bundle_paths, cfg, threads, notes)
    result = BenchResult(fingerprint(), {**asdict(cfg), "threads": threads, "bundles": [str(p) for p in bundle_paths]}, [], notes)
    schedule = Schedule(rounds=cfg.rounds, block_runs=cfg.block_runs, dropped_per_block=cfg.dropped_per_block)
    names = tuple(dict.fromkeys(n for e in engines for n in e.input_names))
    max_positions = int(getattr(tokenizer, "model_max_length", 512) or 512)
    for batch, seq_len in cells:
        if seq_len > max_positions:
            raise InputError(f"--seq {seq_len} is longer than the model allows ({max_positions})", f"pass --seq {max_positions} or less")
        if cfg.real_length:
            workload = real_length(tokenizer, names, batch, seq_len, cfg.real_length_texts)
            mode = "real-length"
            refused = workload_outside(workload, profiles)
            if refused:
                notes.append(f"skipped batch {batch}, sequence {seq_len} (real length): {refused}")
                continue
        else:
            workload = [fixed_shape(tokenizer, names, batch, seq_len)]
            mode = "fixed"
        result.cells.extend(measure_cell(engines, workload, batch, seq_len, mode, schedule, memory, on_round))
        if on_cell:
            on_cell(result)
    return result


def engine_profiles(bundles: list[Bundle]) -> dict[str, EngineConfig]:
    """The optimization profile of every TensorRT bundle, by bundle folder: the shapes its engine takes."""
    from optimize.runtimes.trt_profile import recorded_engine

    return {str(b.path): recorded_engine(b.manifest) for b in bundles if b.manifest.get("runtime") == "tensorrt"}


def plan_cells(batches: tuple[int, ...], seq_lens: tuple[int, ...], profiles: dict[str, EngineConfig], notes: list[str]) -> list[tuple[int, int]]:
    """The (batch, sequence) cells every engine can run; each one a TensorRT engine cannot is skipped
    with one note (set_input_shape would fail mid-run), and none left is a refusal before any work."""
    from optimize.runtimes.trt_profile import describe, outside

    kept = []
    for batch in batches:
        for seq_len in seq_lens:
            refused = [f"{name}: {why}" for name, profile in profiles.items() if (why := outside(profile, batch, seq_len))]
            if refused:
                notes.append(f"skipped batch {batch}, sequence {seq_len}: {'; '.join(refused)}")
            else:
                kept.append((batch, seq_len))
    if not kept:
        ranges = "; ".join(f"{name}: {describe(profile)}" for name, profile in profiles.items())
        raise InputError(
            f"every --batch/--seq cell is outside a TensorRT engine's optimization profile ({ranges})",
            "pass sizes within it, or rebuild the engine with `optimize build BUNDLE --batch MIN,OPT,MAX --seq-len MIN,OPT,MAX`",
        )
    return kept


def workload_outside(workload: list, profiles: dict[str, EngineConfig]) -> str | None:
    """Why some batch of a real-length workload does not fit a TensorRT profile (None: all fit)."""
    from optimize.runtimes.trt_profile import outside

    for feeds in workload:
        rows, seq_len = next(iter(feeds.values())).shape[:2]
        for name, profile in profiles.items():
            why = outside(profile, int(rows), int(seq_len))
            if why:
                return f"{name}: a batch of {why}"
    return None
