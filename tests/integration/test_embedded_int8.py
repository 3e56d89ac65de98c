"""ort-int8's acceptance on the embedded all-MiniLM-L6-v2, through the CLI (about 3 minutes)."""

from __future__ import annotations

import json

import pytest

from cli_helpers import optimize

pytestmark = pytest.mark.slow


def test_int8_bundle_keeps_accuracy_and_shrinks(tmp_path):
    out = tmp_path / "int8"
    result = optimize("export", "bert", "--target", "ort-int8", "--output", str(out), "--no-speed")
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["cosine_mean"] >= 0.99 and parity["cosine_min"] >= 0.97
    assert parity["neighbour_agreement"] >= 0.95
    assert parity["samples"] >= 200
    # issue 3: <= 27 MB, 30% of the 90 MB fp32 file. The search keeps some layers fp32 (15-17 of
    # 24 int8); their weights are stored int8 too and folded back to fp32 at load (23.7 MB)
    assert manifest["files"]["model.onnx"]["bytes"] <= 27_000_000
    int8 = next(p for p in manifest["passes"]["passes"] if p["name"] == "int8")["stats"]
    assert int8["calibration_texts"] == 512 and int8["int8_layers"] >= 14
    # how long calibration takes is a benchmark figure (benchmarks/run_suite.py reports it), not a test
    assert int8["calibration_seconds"] > 0
    storage = next(p for p in manifest["passes"]["passes"] if p["name"] == "weight-storage-int8")["stats"]
    assert storage["weights"] == 24 - int8["int8_layers"]  # each fp32-kept linear layer's weight

    shown = optimize("inspect", str(out))
    assert "int8 sensitivity" in shown.stdout and "L0.ffn_out" in shown.stdout
