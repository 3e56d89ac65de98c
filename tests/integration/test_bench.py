"""`optimize bench` on a tiny bundle: the table, the PyTorch column, JSON, Markdown, PNG, --merge.
(Figures are never asserted: only that they are measured and written.)"""

from __future__ import annotations

import json

import pytest

from cli_helpers import optimize


@pytest.mark.slow  # the quick subset (-m 'not slow') stays under 5 minutes; the full suite runs it
def test_bench_prints_percentiles_with_a_pytorch_column_and_writes_files(tiny_model_dir, tmp_path):
    bundle = tmp_path / "tiny"
    done = optimize("export", str(tiny_model_dir("bert")), "--output", str(bundle), "--no-speed", "--seq-len", "64", "--parity-size", "16")
    assert done.code == 0, done.stderr
    out = tmp_path / "bench"
    result = optimize("bench", str(bundle), "--batch", "1,2", "--seq", "16", "--rounds", "2", "--block-runs", "5", "--out", str(out))
    assert result.code == 0, result.stderr
    for column in ("p50 ms", "p90 ms", "p99 ms", "seq/s", "vs ref"):
        assert column in result.stdout
    assert "pytorch" in result.stdout
    data = json.loads((out / "bench.json").read_text())
    assert {"fingerprint", "config", "cells"} <= set(data)
    engines = {c["engine"] for c in data["cells"]}
    assert {"tiny", "pytorch"} <= engines
    tiny = next(c for c in data["cells"] if c["engine"] == "tiny")
    assert tiny["p50_ms"] > 0 and tiny["p99_ms"] >= tiny["p50_ms"] and tiny["throughput"] > 0 and tiny["speedup"] > 0
    assert "isa" in data["fingerprint"]
    assert (out / "bench.png").stat().st_size > 1000
    assert "| engine |" in (out / "bench.md").read_text()

    merged = optimize("bench", "--merge", str(out / "bench.json"), "--merge", str(out / "bench.json"))
    assert merged.code == 0, merged.stderr
    assert "tiny" in merged.stdout
