"""The dynamic batcher (optimize/serving/batching.py) and the Prometheus text (metrics.py),
without Ray or a model: ``infer`` is a plain function that records the batches it is given."""

from __future__ import annotations

import asyncio
import re

import pytest

from optimize.errors import InputError
from optimize.serving.batching import BatchLimits, DynamicBatcher, plan
from optimize.serving.metrics import Metrics


def test_plan_sorts_by_length_and_respects_size_and_token_budget():
    lengths = [30, 5, 12, 5, 100, 7, 64]
    batches = plan(lengths, BatchLimits(max_batch_size=3, max_batch_tokens=128, max_padding=float("inf")))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)  # sorted by length across batches
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 128
    # 4 texts exceed the size; 12+30+64 would pad to 192 tokens, 64+100 to 200
    assert [[lengths[i] for i in b] for b in batches] == [[5, 5, 7], [12, 30], [64], [100]]


def test_plan_keeps_texts_of_unlike_length_apart():
    # one long text among short ones: padded with them it would cost 5 x 200 tokens for 240 real
    lengths = [10, 200, 9, 11, 10]
    batches = plan(lengths, BatchLimits(max_batch_size=32, max_batch_tokens=8192, max_padding=0.25))
    assert [[lengths[i] for i in b] for b in batches] == [[9, 10, 10, 11], [200]]
    for batch in batches:
        real = sum(lengths[i] for i in batch)
        assert len(batch) * max(lengths[i] for i in batch) <= 1.25 * real
    # 0 allows no padding at all: only texts of equal length share a batch
    assert [[lengths[i] for i in b] for b in plan(lengths, BatchLimits(max_padding=0))] == [[9], [10, 10], [11], [200]]


def test_a_text_over_the_token_budget_runs_alone():
    assert plan([500, 3], BatchLimits(max_batch_size=8, max_batch_tokens=64)) == [[1], [0]]


def test_limits_refuse_nonsense():
    with pytest.raises(InputError, match="max-batch-size"):
        BatchLimits(max_batch_size=0)
    with pytest.raises(InputError, match="batch-wait-ms"):
        BatchLimits(wait_ms=-1)
    with pytest.raises(InputError, match="max-padding"):
        BatchLimits(max_padding=-0.1)
    with pytest.raises(InputError, match="max-padding"):
        BatchLimits(max_padding=float("nan"))
    with pytest.raises(InputError, match="batch-wait-ms"):
        BatchLimits(wait_ms=float("nan"))  # requests waited for a window that never closed


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        return [t.upper() for t in texts]


def test_concurrent_requests_share_batches_and_get_their_answers_in_order():
    recorder = Recorder()
    metrics = Metrics("b", "r")
    batcher = DynamicBatcher(recorder, BatchLimits(max_batch_size=4, max_batch_tokens=10_000, wait_ms=50, max_padding=float("inf")), metrics)
    # within a request, later texts are shorter: sorting by length reverses them, and they come back in order
    requests = [[f"r{r}-t{t}" + "x" * (r + 3 * (3 - t)) for t in range(r % 3 + 1)] for r in range(6)]

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(batcher.submit(texts, [len(t) for t in texts]) for texts in requests))

    answers = asyncio.run(main())
    batcher.close()
    assert answers == [[t.upper() for t in texts] for texts in requests]
    assert sum(len(b) for b in recorder.batches) == sum(len(r) for r in requests)
    assert all(len(b) <= 4 for b in recorder.batches)
    assert len(recorder.batches) == 3  # 12 texts in batches of 4: requests were merged and split
    split = [texts for texts in requests if len({i for i, b in enumerate(recorder.batches) for t in texts if t in b}) > 1]
    assert split, "some request's texts went into more than one batch"
    for batch in recorder.batches:
        assert [len(t) for t in batch] == sorted(len(t) for t in batch)
    text = metrics.render()
    assert 'optimize_batch_size_count{bundle="b",replica="r"} 3' in text
    assert 'optimize_texts_total{bundle="b",replica="r"} 12' in text


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = {"n": 0}

    def flaky(texts: list[str]) -> list[str]:
        calls["n"] += 1
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return texts

    batcher = DynamicBatcher(flaky, BatchLimits(max_batch_size=1, wait_ms=0))

    async def main() -> tuple[object, list[str]]:
        failed = await asyncio.gather(batcher.submit(["boom"], [1]), return_exceptions=True)
        return failed[0], await batcher.submit(["fine"], [1])

    failed, fine = asyncio.run(main())
    batcher.close()
    assert isinstance(failed, RuntimeError) and fine == ["fine"]


def test_metrics_text_is_prometheus_exposition():
    metrics = Metrics('we"ird', "r1")
    metrics.request("/v1/embeddings", 200, 0.012)
    metrics.request("/v1/embeddings", 413, 0.001)
    metrics.batch(8, 8 * 20, 0.02)
    metrics.queued(5)
    text = metrics.render()
    assert 'bundle="we\\"ird"' in text
    assert 'optimize_requests_total{bundle="we\\"ird",replica="r1",route="/v1/embeddings",code="413"} 1' in text
    assert 'optimize_request_errors_total{bundle="we\\"ird",replica="r1",route="/v1/embeddings"} 1' in text
    assert 'optimize_queue_depth{bundle="we\\"ird",replica="r1"} 5' in text
    assert 'optimize_batch_size_bucket{bundle="we\\"ird",replica="r1",le="4"} 0' in text
    assert 'optimize_batch_size_bucket{bundle="we\\"ird",replica="r1",le="8"} 1' in text
    assert 'optimize_request_seconds_count{bundle="we\\"ird",replica="r1",route="/v1/embeddings"} 2' in text
    sample = re.compile(r'^[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+$|^# (HELP|TYPE) ')
    assert all(sample.match(line) for line in text.splitlines()), [l for l in text.splitlines() if not sample.match(l)]
