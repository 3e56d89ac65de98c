"""Prometheus text exposition of one replica's counters: requests, errors, queue depth, batch
sizes, latencies. Hand-written (the format is a few lines) so a replica needs no client
library; each replica reports its own numbers, labelled with its ``replica`` name."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket (+Inf only)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.observations += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip([*self.buckets, float("inf")], self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {_number(self.total)}")
        out.append(f"{name}_count{{{labels}}} {self.observations}")
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters of one replica of one bundle; updated from the event loop and the batch thread."""

    def __init__(self, bundle: str, replica: str) -> None:
        self.base = f'bundle="{_escape(bundle)}",replica="{_escape(replica)}"'
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.texts = 0
        self.depth = 0
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.batch_tokens = Histogram(TOKEN_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)

    # the batcher's observer
    def queued(self, depth: int) -> None:
        self.depth = depth

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes.observe(size)
            self.batch_tokens.observe(padded_tokens)
            self.batch_seconds.observe(seconds)
            self.texts += size

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            lines += _family("optimize_requests_total", "counter", "HTTP requests answered, by route and status code.")
            lines += [f'optimize_requests_total{{{self.base},route="{_escape(r)}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())]
            errors: dict[str, int] = {}
            for (route, code), n in self.requests.items():
                if code >= 400:
                    errors[route] = errors.get(route, 0) + n
            lines += _family("optimize_request_errors_total", "counter", "Requests answered with a 4xx or 5xx status, by route.")
            lines += [f'optimize_request_errors_total{{{self.base},route="{_escape(r)}"}} {n}' for r, n in sorted(errors.items())]
            lines += _family("optimize_texts_total", "counter", "Texts run through the model.")
            lines.append(f"optimize_texts_total{{{self.base}}} {self.texts}")
            lines += _family("optimize_queue_depth", "gauge", "Texts waiting for a batch.")
            lines.append(f"optimize_queue_depth{{{self.base}}} {self.depth}")
            lines += _family("optimize_batch_size", "histogram", "Texts per batch run by the model.")
            lines += self.batch_sizes.lines("optimize_batch_size", self.base)
            lines += _family("optimize_batch_padded_tokens", "histogram", "Padded tokens per batch (rows x longest row).")
            lines += self.batch_tokens.lines("optimize_batch_padded_tokens", self.base)
            lines += _family("optimize_batch_seconds", "histogram", "Seconds the model took per batch.")
            lines += self.batch_seconds.lines("optimize_batch_seconds", self.base)
            lines += _family("optimize_request_seconds", "histogram", "Seconds from a request's arrival to its answer, by route.")
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.lines("optimize_request_seconds", f'{self.base},route="{_escape(route)}"')
            return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> Sequence[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
