"""Running a bundle: ``optimize.load(bundle)`` -> the task's model object (optimize/predictors.py).

The bundle's own tokenizer, its manifest's session settings and threads, and batches cut by
length: inputs are sorted by their token count, cut into batches of ``batch_size`` and each batch
is padded only to its own longest input, then results go back into the caller's order. ONNX
Runtime bundles run in ONNX Runtime; TensorRT bundles through their engine (TensorRT is imported
only then). A raw-text bundle (``--with-tokenizer``) is fed the strings themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize import bundle as bundles
from optimize.config import SessionConfig
from optimize.errors import BuildError, InputError
from optimize.runtimes.base import Feeds, Runner

#: the input of a raw-text graph (--with-tokenizer): a string tensor [batch]
TEXT_INPUT = "text"


@dataclass(frozen=True)
class Batch:
    """One batch: where its rows go in the caller's order, what was fed, what came out."""

    rows: list[int]
    feeds: Feeds
    outputs: dict[str, np.ndarray]
    #: per row, the tokenizer's encoding (offsets, special-token mask, sequence ids), where asked for
    encodings: list[Any]

    @property
    def mask(self) -> np.ndarray:
        """[rows, sequence] 1 at real tokens: the fed mask, or the one a raw-text graph returns."""
        if "attention_mask" in self.feeds:
            return self.feeds["attention_mask"]
        return self.outputs["attention_mask"]


def session_config(manifest: dict[str, Any], threads: int = 0, providers: Sequence[str] | None = None) -> SessionConfig:
    """The session settings the manifest records (optimizers it disables, custom-op libraries)."""
    recorded = manifest.get("session") or {}
    return SessionConfig(
        threads=threads,
        optimization_level=recorded.get("optimization_level", "all"),
        disabled_optimizers=tuple(recorded.get("disabled_optimizers", ())),
        custom_ops=tuple(recorded.get("custom_ops", ())),
        **({"providers": tuple(providers)} if providers else {}),
    )


class BundleRuntime:
    """A bundle's runner and tokenizer, and the length-bucketed batching every task uses."""

    def __init__(self, bundle: bundles.Bundle, runner: Runner, tokenizer: Any, max_length: int, max_batch: int | None, progress: bool) -> None:
        self.bundle = bundle
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_batch = max_batch
        self.progress = progress
        self.inputs = tuple(i["name"] for i in bundle.manifest["io"]["inputs"])
        self.raw_text = self.inputs == (TEXT_INPUT,)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.bundle.manifest

    def config(self) -> dict[str, Any]:
        path = self.bundle.path / "config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"bundle {self.bundle.path} has no readable config.json", "re-create it with `optimize export`") from exc

    def batches(self, texts: Sequence[str], batch_size: int, pairs: Sequence[str] | None = None, offsets: bool = False) -> Iterator[Batch]:
        """Every text once, in batches of similar length; ``pairs``: a second text per row
        (question answering: the context, truncated before the question is)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}", "pass e.g. batch_size=32")
        if self.max_batch is not None:
            batch_size = min(batch_size, self.max_batch)
        if not texts:
            return
        if self.raw_text:
            yield from self._raw_batches(list(texts), batch_size)
            return
        encoded = self.tokenizer(
            list(texts),
            *([list(pairs)] if pairs is not None else []),
            truncation="only_second" if pairs is not None else True,
            max_length=self.max_length,
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets,
        )
        ids = encoded["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for rows in self._tracked(chunks):
            feeds = self._pad(encoded, rows)
            encodings = [encoded.encodings[i] for i in rows] if offsets else []
            yield Batch(rows, feeds, self.runner.infer(feeds), encodings)

    def _raw_batches(self, texts: list[str], batch_size: int) -> Iterator[Batch]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for rows in self._tracked(chunks):
            feeds = {TEXT_INPUT: np.array([texts[i] for i in rows], dtype=object)}
            yield Batch(rows, feeds, self.runner.infer(feeds), [])

    def _pad(self, encoded: Any, rows: list[int]) -> Feeds:
        """The rows padded to their longest, on the side the tokenizer pads."""
        length = max(len(encoded["input_ids"][i]) for i in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        feeds: Feeds = {}
        for name in self.inputs:
            fill = pad_id if name == "input_ids" else 0
            array = np.full((len(rows), length), fill, dtype=np.int64)
            for r, i in enumerate(rows):
                values = encoded[name][i] if name in encoded else [0] * len(encoded["input_ids"][i])
                if name == "attention_mask" and name not in encoded:
                    values = [1] * len(encoded["input_ids"][i])
                if left:
                    array[r, length - len(values) :] = values
                else:
                    array[r, : len(values)] = values
            feeds[name] = array
        return feeds

    def _tracked(self, chunks: list[list[int]]) -> Iterator[list[int]]:
        if not self.progress or len(chunks) < 2:
            yield from chunks
            return
        from rich.console import Console
        from rich.progress import track

        yield from track(chunks, description=f"running {self.bundle.path.name}", console=Console(stderr=True), transient=True)


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"bundle {path} has no tokenizer transformers can load ({exc.__class__.__name__})", "re-create it with `optimize export`") from exc


def _ort_runner(bundle: bundles.Bundle, cfg: SessionConfig) -> Runner:
    from optimize.runtimes.ort import OrtRunner
    from optimize.untrusted import load_untrusted

    load_untrusted(bundle.model_path)  # the checker and external-data paths first, as `inspect` does
    runner = OrtRunner(bundle.model_path, cfg)
    runner.activate()  # a bundle that does not load says so now, not at the first call
    return runner


def _tensorrt_runner(bundle: bundles.Bundle) -> tuple[Runner, int, int]:
    """The engine behind a profile-fitting runner; TensorRT is imported here and only here."""
    from optimize.runtimes import tensorrt
    from optimize.runtimes.trt_profile import ProfileFit, recorded_engine

    reason = tensorrt.unavailable()
    if reason:
        raise BuildError(
            f"cannot run TensorRT bundle {bundle.path} here: {reason}",
            f"run it on its GPU machine after `optimize build {bundle.path}`, or export an ort-* target to run it here",
        )
    engine = recorded_engine(bundle.manifest)
    config = json.loads((bundle.path / "config.json").read_text(encoding="utf-8"))
    pad_id = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else 0
    return ProfileFit(tensorrt.bundle_runner(bundle), engine, pad_id=pad_id), engine.batch.maximum, engine.sequence.maximum


def load(
    path: str | Path,
    *,
    threads: int = 0,
    providers: Sequence[str] | None = None,
    progress: bool = False,
    max_length: int | None = None,
) -> Any:
    """Open the bundle at ``path`` and return its task's model object (optimize/predictors.py).

    ``threads``: ONNX Runtime intra-op threads (0: one per physical core). ``providers``: ONNX
    Runtime execution providers (default: the CPU). ``progress``: a progress bar on stderr for
    inputs of more than one batch. ``max_length``: truncate inputs at this many tokens (default:
    the tokenizer's limit, the model's positions, and for TensorRT the engine's profile).
    """
    from optimize import predictors
    from optimize.tasks import get_task

    bundle = bundles.read_bundle(Path(path))
    task = get_task(str(bundle.manifest.get("task", "feature-extraction")))
    if threads < 0:
        raise InputError(f"threads must be 0 or more, got {threads}", "pass threads=0 for one per physical core")
    limit = int((bundle.manifest.get("source") or {}).get("max_sequence") or 512)
    max_batch = None
    if bundle.manifest.get("runtime") == "tensorrt":
        runner, max_batch, engine_sequence = _tensorrt_runner(bundle)
        limit = min(limit, engine_sequence)
    else:
        runner = _ort_runner(bundle, session_config(bundle.manifest, threads, providers))
    tokenizer = _tokenizer(bundle.path)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < limit:
        limit = model_max  # sentence-transformers' max_seq_length, saved into the bundle's tokenizer
    if max_length is not None:
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}", "pass e.g. max_length=128")
        limit = min(limit, max_length)
    runtime = BundleRuntime(bundle, runner, tokenizer, limit, max_batch, progress)
    predictor: Callable[[BundleRuntime], Any] = getattr(predictors, task.predictor)
    return predictor(runtime)
