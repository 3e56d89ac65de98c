"""Side-by-side timing in one process: alternating blocks of runs, medians, ratios.

Engines are timed in blocks (many runs of one engine, then many of the next), never run by
run: interleaving single runs lets one engine's spinning threads slow the other's next run.
The first runs of each block are dropped (threads waking, caches refilling). A speed claim
is the median over rounds of the ratio of block medians, both measured in the same round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Schedule:
    rounds: int = 7
    block_runs: int = 12
    dropped_per_block: int = 3
    warmup_runs: int = 3

    def __post_init__(self) -> None:
        if self.block_runs <= self.dropped_per_block:
            raise ValueError("a block must keep at least one run after the dropped ones")


@dataclass
class SideBySide:
    schedule: Schedule
    block_medians: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median_seconds(self, name: str) -> float:
        return float(np.median(self.block_medians[name]))

    def percentile_seconds(self, name: str, q: float) -> float:
        return float(np.percentile(self.samples[name], q))

    def ratio(self, baseline: str, name: str) -> float:
        """How many times faster ``name`` is than ``baseline``: median over rounds."""
        pairs = zip(self.block_medians[baseline], self.block_medians[name])
        return float(np.median([b / n for b, n in pairs]))

    def spread(self, baseline: str, name: str) -> tuple[float, float]:
        ratios = [b / n for b, n in zip(self.block_medians[baseline], self.block_medians[name])]
        return float(min(ratios)), float(max(ratios))


def _block(call: Callable[[], object], runs: int, dropped: int) -> list[float]:
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times[dropped:]


def alternate(
    engines: dict[str, Callable[[], object]],
    schedule: Schedule = Schedule(),
    on_round: Callable[[int], None] | None = None,
) -> SideBySide:
    """Time each engine in alternating blocks; the starting engine rotates every round."""
    names = list(engines)
    result = SideBySide(schedule, {n: [] for n in names}, {n: [] for n in names})
    for name in names:
        for _ in range(schedule.warmup_runs):
            engines[name]()
    for round_index in range(schedule.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            kept = _block(engines[name], schedule.block_runs, schedule.dropped_per_block)
            result.block_medians[name].append(float(np.median(kept)))
            result.samples[name].extend(kept)
        if on_round:
            on_round(round_index + 1)
    return result
