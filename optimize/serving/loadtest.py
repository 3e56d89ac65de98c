"""``optimize bench --serve URL``: drive a running endpoint with concurrent clients and report
throughput, p50/p90/p99 latency and errors in `optimize bench`'s JSON/Markdown/PNG reports.

Each concurrency level is a closed loop: that many clients (threads, one keep-alive connection
each) send a request, wait for its answer, send the next, for ``duration`` seconds after a short
warm-up. Texts are the held-out calibration sentences at natural length (``--real-length``) or
a fixed number of words of held-out text. Several URLs are driven in turn at each level, and each
gets its throughput relative to the first one's at the same level.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from optimize.errors import InputError

SCHEMA = "optimize-bench/1"


@dataclass(frozen=True)
class LoadConfig:
    urls: tuple[str, ...]
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 30.0
    texts_per_request: int = 1
    real_length: bool = False
    #: words per text without --real-length
    words: int = 128
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.duration_s < math.inf:  # NaN and infinity too, as the other number checks
            raise InputError(f"--duration must be a positive number of seconds, got {self.duration_s}", "pass e.g. --duration 30")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise InputError(f"--serve takes an http:// URL, got {url!r}", "pass e.g. --serve http://127.0.0.1:8000")

    @property
    def warmup_s(self) -> float:
        return min(2.0, self.duration_s / 5)


@dataclass
class ServeCell:
    """One URL at one concurrency: the bench cell fields, plus the load's own."""

    engine: str
    batch: int  # texts per request
    seq_len: int  # the server's sequence (real-length) or the words per text (fixed)
    mode: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # texts answered per second
    requests_per_s: float
    speedup: float | None = None
    reference: str | None = None
    rss_mb: float | None = None
    file_mb: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    path: str  # the route that runs the model
    field: str  # the request's text field
    info: dict[str, Any]


def _request(host: str, port: int, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def probe(url: str, timeout: float = 10.0) -> Endpoint:
    """What the server at ``url`` serves (its GET /info), so the load hits the right route."""
    parts = urlsplit(url)
    host, port, base = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")
    try:
        status, raw = _request(host, port, "GET", f"{base}/info", None, timeout)
        info = json.loads(raw) if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise InputError(f"cannot reach {url} ({exc.__class__.__name__}: {exc})", "start the server with `optimize serve BUNDLE` and pass its URL") from None
    if not isinstance(info, dict) or "task" not in info:
        raise InputError(f"{url}/info did not describe a bundle (HTTP {status})", "pass the URL `optimize serve` printed")
    embeds = info["task"] in ("feature-extraction", "sentence-embedding")
    return Endpoint(url, host, port, f"{base}/v1/embeddings" if embeds else f"{base}/predict", "input" if embeds else "inputs", info)


def texts(cfg: LoadConfig) -> list[str]:
    from optimize.calibration.corpus import held_out_paragraphs, held_out_texts

    if cfg.real_length:
        return list(held_out_texts())
    words = " ".join(held_out_paragraphs()).split()
    return [" ".join((words[i * 37 :] + words[: i * 37])[: cfg.words]) for i in range(64)]


def _payloads(endpoint: Endpoint, pool: list[str], per_request: int) -> list[bytes]:
    cycle = itertools.cycle(pool)
    count = max(len(pool) // per_request, 1)
    return [json.dumps({endpoint.field: [next(cycle) for _ in range(per_request)]}).encode() for _ in range(count)]


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    texts: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str, seconds: float, texts: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == "200":
                self.latencies.append(seconds)
                self.texts += texts


def drive(endpoint: Endpoint, payloads: list[bytes], per_request: int, concurrency: int, duration_s: float, warmup_s: float, timeout_s: float) -> tuple[_Tally, float]:
    """``concurrency`` closed-loop clients for warm-up + ``duration_s``; what finished in the
    measured window, and its length in seconds."""
    tally = _Tally()
    started = time.monotonic()
    window_start = started + warmup_s
    window_end = window_start + duration_s
    counter = itertools.count()

    def client(offset: int) -> None:
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < window_end:
            body = payloads[(offset + next(counter)) % len(payloads)]
            sent = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
                connection.request("POST", endpoint.path, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                status = "timeout" if isinstance(exc, TimeoutError) else "connection error"
                if connection is not None:
                    connection.close()
                connection = None
            done = time.monotonic()
            if window_start <= sent and done <= window_end:
                tally.add(status, done - sent, per_request)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, args=(i * 7,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + warmup_s + timeout_s + 10)
    return tally, duration_s


def measure(endpoint: Endpoint, cfg: LoadConfig, concurrency: int, payloads: list[bytes]) -> ServeCell:
    tally, seconds = drive(endpoint, payloads, cfg.texts_per_request, concurrency, cfg.duration_s, cfg.warmup_s, cfg.timeout_s)
    ms = np.array(tally.latencies) * 1000 if tally.latencies else np.array([float("nan")])
    ok = len(tally.latencies)
    return ServeCell(
        engine=urlsplit(endpoint.url).netloc + urlsplit(endpoint.url).path.rstrip("/"),
        batch=cfg.texts_per_request,
        seq_len=int(endpoint.info.get("max_length") or 0) if cfg.real_length else cfg.words,
        mode="real-length" if cfg.real_length else "fixed",
        concurrency=concurrency,
        requests=sum(tally.statuses.values()),
        errors=sum(n for status, n in tally.statuses.items() if status != "200"),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        throughput=tally.texts / seconds,
        requests_per_s=ok / seconds,
        statuses=dict(tally.statuses),
    )


def run_load(cfg: LoadConfig, on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every URL at every concurrency; the result in `optimize bench`'s JSON schema."""
    from optimize.bench.hardware import fingerprint

    endpoints = [probe(url) for url in cfg.urls]
    pool = texts(cfg)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "fingerprint": fingerprint(),
        "config": {
            "kind": "serve",
            "urls": list(cfg.urls),
            "concurrency": list(cfg.concurrency),
            "duration_s": cfg.duration_s,
            "warmup_s": cfg.warmup_s,
            "texts_per_request": cfg.texts_per_request,
            "real_length": cfg.real_length,
            "threads": "server's",
            "servers": [e.info for e in endpoints],
        },
        "cells": [],
        "notes": [
            "seq/s is texts answered per second by the endpoint; latency is each request's round trip as the client saw it",
            "the fingerprint is the client's machine",
        ],
    }
    for concurrency in cfg.concurrency:
        reference: ServeCell | None = None
        for endpoint in endpoints:
            cell = measure(endpoint, cfg, concurrency, _payloads(endpoint, pool, cfg.texts_per_request))
            if reference is None:
                reference = cell
            elif reference.throughput > 0:
                cell.speedup = cell.throughput / reference.throughput
                cell.reference = reference.engine
            result["cells"].append(asdict(cell))
            if on_cell:
                on_cell(result)
    return result
