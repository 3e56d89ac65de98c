"""Nothing lost: interrupted exports leave the previous bundle intact and no staging folder;
the same command twice gives the same model.onnx, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _export_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "optimize", "export", str(model), "--output", str(out), "--no-speed",
            "--seq-len", "64", "--parity-size", "16", *extra]


@pytest.fixture(scope="module")
def existing_bundle(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupt") / "bundle"
    done = subprocess.run(_export_args(tiny_model_dir("bert"), out), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("sig", "delay"),
    [(signal.SIGINT, 0.8), (signal.SIGTERM, 2.5), (signal.SIGINT, 4.5), (signal.SIGTERM, 6.5), (signal.SIGINT, 8.5)],
)
def test_interrupted_forced_export_keeps_the_previous_bundle(sig, delay, existing_bundle, tiny_model_dir):
    before = _snapshot(existing_bundle)
    process = subprocess.Popen(
        _export_args(tiny_model_dir("bert"), existing_bundle, "--force"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=ENV,
    )
    time.sleep(delay)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=600)
    assert "Traceback" not in stderr + stdout
    leftovers = [p.name for p in existing_bundle.parent.iterdir() if p.name != existing_bundle.name]
    assert leftovers == [], leftovers
    after = _snapshot(existing_bundle)
    if process.returncode == 0:  # finished before the signal: the new bundle is whole
        assert json.loads(after["manifest.json"])["format"]
        assert after["model.onnx"] == before["model.onnx"]  # and, deterministic, the same model
    else:
        # 130 with one line; or, for a signal that lands while the interpreter itself is starting
        # or tearing down (before/after any handler), death by that signal. Either way nothing is lost.
        assert process.returncode in (130, -sig), stderr
        if process.returncode == 130:
            assert [line for line in stderr.splitlines() if line.startswith("error:")], stderr
        assert after == before


def _comparable(manifest: dict) -> dict:
    """The manifest without what legitimately differs run to run: times, timestamps, paths."""

    def clean(value):
        if isinstance(value, dict):
            return {
                k: clean(v) for k, v in value.items()
                if k not in ("created", "output") and "seconds" not in k and not k.endswith("_s")
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(manifest)


def test_the_same_command_twice_gives_the_same_bundle(tiny_model_dir, tmp_path):
    """ort-int8: calibration, search and emission on top of export and fusion (the interruption
    test above already compares ort-fp32's model.onnx across runs whenever an export completes)."""
    extra = ("--target", "ort-int8", "--calibration-size", "48")
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        done = subprocess.run(_export_args(tiny_model_dir("bert"), out, *extra), capture_output=True, text=True, env=ENV, timeout=900)
        assert done.returncode == 0, done.stderr
        runs.append(out)
    assert (runs[0] / "model.onnx").read_bytes() == (runs[1] / "model.onnx").read_bytes()
    first, second = (json.loads((r / "manifest.json").read_text()) for r in runs)
    assert _comparable(first) == _comparable(second)
