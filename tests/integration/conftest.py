"""Bundles of tiny models, one per task, exported once per session for the tests that use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tiny_models

#: label names written into the tiny heads' configs, so a bundle's id2label is visibly used
LABELS = {"sequence": ["negative", "neutral", "positive"], "token": ["O", "B-PER", "I-PER"]}
HEAD = {"feature-extraction": None, "text-classification": "sequence", "token-classification": "token", "question-answering": "qa"}


def _name_labels(folder: Path, names: list[str]) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A function task -> (source folder, ort-fp32 bundle) of a tiny BERT with that task's head
    (weights with std 0.5, so labels and spans differ from text to text), built once."""
    from optimize.api import export_model
    from optimize.config import ExportConfig, ExportJob, ParityConfig, SpeedCheckConfig

    root = tmp_path_factory.mktemp("tiny-bundles")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(task: str) -> tuple[Path, Path]:
        if task not in cache:
            head = HEAD[task]
            source = tiny_models.build("bert", root / f"src-{task}", head=head, init_std=0.5)
            if head in LABELS:
                _name_labels(source, LABELS[head])
            job = ExportJob(
                model=str(source),
                target="ort-fp32",
                output=root / task,
                export=ExportConfig(task="", seq_len=64, dynamic_probe_shapes=((1, 5), (3, 17))),
                parity=ParityConfig(size=24, unseen_size=24, seq_len=64),
                speed=SpeedCheckConfig(enabled=False),
            )
            export_model(job)
            cache[task] = (source, root / task)
        return cache[task]

    return get


def _export_once(tmp_path_factory: pytest.TempPathFactory, name: str, bundle: str, *args: str):
    """`optimize export bert ARGS --output NAME/BUNDLE`, run once per pytest session whichever
    pytest-xdist worker asks first: the others wait on a lock and read the same bundle and the
    same recorded result. Returns (bundle folder, Result)."""
    import dataclasses
    import os

    from cli_helpers import Result, optimize
    from side_envs import locked

    # under xdist each worker's base folder sits inside the session's; alone, the base is the session's
    session_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_root = session_root.parent
    folder = session_root / name
    out, record = folder / bundle, folder / "result.json"
    with locked(session_root / f"{name}.lock"):
        if not record.exists():
            folder.mkdir(exist_ok=True)
            done = optimize("export", "bert", *args, "--output", str(out))
            record.write_text(json.dumps(dataclasses.asdict(done)))
        result = Result(**json.loads(record.read_text()))
    assert result.code == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def embedded_fp32_export(tmp_path_factory: pytest.TempPathFactory):
    """The README's main job, `optimize export bert --target ort-fp32 --output DIR`, run once for
    every test that reads its bundle or its output (about 35 s a run on 2 cores). Tests must not
    write into the bundle."""
    return _export_once(tmp_path_factory, "embedded-fp32", "bert-fp32", "--target", "ort-fp32")


@pytest.fixture(scope="session")
def embedded_int8_sentence_export(tmp_path_factory: pytest.TempPathFactory):
    """`optimize export bert --task sentence-embedding --target ort-int8 --no-speed` (issue 19's
    bundle), run once for the int8 acceptance and the sentence-transformers comparison: an int8
    export of the embedded BERT costs 1.5-2.5 minutes on 2 cores. Tests must not write into the
    bundle."""
    return _export_once(tmp_path_factory, "embedded-int8-sentence", "q", "--task", "sentence-embedding", "--target", "ort-int8", "--no-speed")
