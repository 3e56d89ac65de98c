"""Dynamic batching across concurrent requests, by token budget (pure Python, no Ray).

Requests' texts wait at most ``wait_ms`` for company, then everything waiting is sorted by
token length and cut into batches of at most ``max_batch_size`` texts and ``max_batch_tokens``
padded tokens (rows x the batch's longest row: what the model really computes), and with at
most ``max_padding`` of padding above their real tokens. A request's
texts may land in several batches; its answers are put back in its own order. Inference runs
in one worker thread, so the event loop keeps taking requests (and the next batch fills) while
a batch runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from optimize.errors import InputError


@dataclass(frozen=True)
class BatchLimits:
    """How large a batch may grow and how long a text waits for others."""

    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    wait_ms: float = 5.0
    #: padded tokens a batch may have above its real ones, as a share of them. Padding is not
    #: free even in an unpadded graph (attention still runs on the padded layout), and on a
    #: CPU a batch gains little over one text at a time: the int8 embedded BERT on 960 held-out
    #: texts in windows of 32, in process, 2 threads, AVX-512 VNNI: one at a time 512 texts/s;
    #: each window sorted and cut by size and tokens alone 139; with this bound at 0.5 / 0.25 /
    #: 0.1, 487 / 547 / 558 (8.6 / 5.5 / 3.0 texts a batch). 0.25 keeps batches of similar texts
    #: large where the texts allow it (short ones) and long texts in small batches.
    max_padding: float = 0.25

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InputError(f"--max-batch-size must be at least 1, got {self.max_batch_size}", "pass e.g. --max-batch-size 32")
        if self.max_batch_tokens < 1:
            raise InputError(f"--max-batch-tokens must be at least 1, got {self.max_batch_tokens}", "pass e.g. --max-batch-tokens 8192")
        if not 0 <= self.wait_ms < math.inf:  # NaN and infinity too
            raise InputError(f"--batch-wait-ms must be a finite number, 0 or more, got {self.wait_ms}", "pass e.g. --batch-wait-ms 5")
        if not self.max_padding >= 0:  # NaN too; infinity is no bound
            raise InputError(f"--max-padding must be 0 or more, got {self.max_padding}", "pass e.g. --max-padding 0.25")


def plan(lengths: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Indices into ``lengths``, sorted by length and cut into batches within the limits.

    A batch's cost is its padded size, rows x its longest row; since rows are sorted, adding a
    row makes it the longest. A single text over the token budget still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0  # real tokens of the current batch
    for i in order:
        grown, longest = len(current) + 1, max(lengths[i], 1)
        too_big = grown > limits.max_batch_size or grown * longest > limits.max_batch_tokens
        too_padded = grown * longest > (real + longest) * (1 + limits.max_padding)
        if current and (too_big or too_padded):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += max(lengths[i], 1)
    if current:
        batches.append(current)
    return batches


class BatchObserver(Protocol):
    """What the batcher reports (metrics.py implements it)."""

    def queued(self, depth: int) -> None: ...

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None: ...


@dataclass
class _Request:
    future: asyncio.Future
    results: list[Any]
    remaining: int


@dataclass
class _Item:
    request: _Request
    index: int
    text: str
    length: int
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Collects texts from concurrent ``submit`` calls and runs them through ``infer`` in batches.

    ``infer(texts)`` returns one answer per text, in order (the bundle's model object, called
    with the batch as its own batch). It runs in a single worker thread: one session per
    replica, batches one after another.
    """

    def __init__(self, infer: Callable[[list[str]], Sequence[Any]], limits: BatchLimits, observer: BatchObserver | None = None) -> None:
        self.infer = infer
        self.limits = limits
        self.observer = observer
        self._pending: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimize-batch")

    @property
    def depth(self) -> int:
        """Texts waiting for a batch."""
        return len(self._pending)

    async def submit(self, texts: Sequence[str], lengths: Sequence[int]) -> list[Any]:
        """The answers for ``texts`` (token ``lengths`` as the model will see them), in order."""
        if len(texts) != len(lengths):
            raise ValueError("one length per text")
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())
        request = _Request(loop.create_future(), [None] * len(texts), len(texts))
        self._pending.extend(_Item(request, i, t, n) for i, (t, n) in enumerate(zip(texts, lengths)))
        self._report_depth()
        assert self._wake is not None
        self._wake.set()
        return await request.future

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._gather()
                taken, self._pending = self._pending, []
                self._report_depth()
                for rows in plan([item.length for item in taken], self.limits):
                    await self._run_batch([taken[i] for i in rows])

    async def _gather(self) -> None:
        """Wait until the oldest text has waited ``wait_ms`` or a full batch is there."""
        deadline = self._pending[0].arrived + self.limits.wait_ms / 1000
        while len(self._pending) < self.limits.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return
            self._wake.clear()

    async def _run_batch(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.request.future.done()]  # a client gone: skip its texts
        if not live:
            return
        started = time.perf_counter()
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, [item.text for item in live])
            if len(answers) != len(live):
                raise RuntimeError(f"the model gave {len(answers)} answers for {len(live)} texts")
            if self.observer is not None:
                self.observer.batch(len(live), len(live) * max(item.length for item in live), time.perf_counter() - started)
            for item, answer in zip(live, answers):
                request = item.request
                if request.future.done():
                    continue
                request.results[item.index] = answer
                request.remaining -= 1
                if request.remaining == 0:
                    request.future.set_result(request.results)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error (a 500), the loop goes on
            for item in live:
                if not item.request.future.done():
                    item.request.future.set_exception(exc)

    def _report_depth(self) -> None:
        if self.observer is not None:
            self.observer.queued(len(self._pending))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
