"""Shared fixtures: tiny models (built once per session) and a fast export job factory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402
from shared_data import SHARED_DATA, require_shared_file  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A function (kind, classification, head) -> folder of a tiny random model, built once."""
    cache: dict[tuple[str, str | None], Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def get(kind: str, classification: bool = False, head: str | None = None) -> Path:
        head = "sequence" if classification else head
        key = (kind, head)
        if key not in cache:
            suffix = {None: "", "sequence": "-cls"}.get(head, f"-{head}")
            cache[key] = tiny_models.build(kind, root / f"{kind}{suffix}", head=head)
        return cache[key]

    return get


@pytest.fixture
def quick_job():
    """An ExportJob for tiny models: no speed line, a small parity sample."""
    from optimize.config import ExportConfig, ExportJob, ParityConfig, SpeedCheckConfig

    def make(model: str, output: Path, target: str = "ort-fp32", **changes):
        task = changes.pop("task", "")
        return ExportJob(
            model=model,
            target=target,
            output=output,
            export=ExportConfig(task=task, seq_len=64, dynamic_probe_shapes=((1, 5), (3, 17))),
            parity=ParityConfig(size=24, seq_len=64),
            speed=SpeedCheckConfig(enabled=False),
            **changes,
        )

    return make


ROTTEN_TOMATOES = SHARED_DATA / "rotten_tomatoes.csv"


@pytest.fixture(scope="session")
def rotten_tomatoes_test_texts():
    """Real labelled sentences (the `test` split) from ../shared; never used for calibration.
    Skips where ../shared is absent, fails under CI (tests/shared_data.py)."""
    import csv

    with open(require_shared_file(ROTTEN_TOMATOES), newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row["split"] == "test"]
