"""A TensorRT engine's optimization profile: what the manifest records, and feeds shaped to fit it.

An engine takes only shapes inside its profile: ``set_input_shape`` refuses a batch or a sequence
outside [min, max], and Polygraphy raises. The engine check feeds held-out text in batches of 16
padded to their longest text, so those batches are made to fit: rows past the maximum batch go to
a batch of their own and tokens past the maximum sequence are cut, for ONNX Runtime and the engine
alike (``cut_to_profile``); a batch below the minimum is padded for the engine only, with repeated
rows and masked padding tokens, and the engine's outputs are cut back to the real rows and tokens
(``ProfileFit``). ``optimize bench`` instead refuses or skips shapes outside the profile
(``outside``): timing a padded shape would report the wrong shape's time.

No TensorRT import here: all of it runs and is tested on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from optimize.config import EngineConfig, ShapeRange
from optimize.errors import BundleError
from optimize.runtimes.base import Feeds, Runner


def profile_shapes(input_names: list[str], engine: EngineConfig) -> dict[str, list[list[int]]]:
    """min/opt/max shape of every [batch, sequence] input, as the manifest records them."""
    b, s = engine.batch, engine.sequence
    return {name: [[b.minimum, s.minimum], [b.optimum, s.optimum], [b.maximum, s.maximum]] for name in input_names}


def recorded_engine(manifest: dict[str, Any]) -> EngineConfig:
    """The profile and workspace a TensorRT bundle's manifest records (as exported, or as last built)."""
    section = manifest.get("tensorrt") or {}
    shapes = section.get("profile") or {}
    if not shapes:
        raise BundleError(
            "the bundle's manifest records no TensorRT optimization profile",
            "re-export it with --target trt-fp16 or --target trt-int8",
        )
    try:
        low, opt, high = next(iter(shapes.values()))
        return EngineConfig(
            batch=ShapeRange(int(low[0]), int(opt[0]), int(high[0])),
            sequence=ShapeRange(int(low[1]), int(opt[1]), int(high[1])),
            workspace_mib=int(section.get("workspace_mib", EngineConfig.workspace_mib)),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise BundleError(f"the manifest's TensorRT profile {shapes!r} is malformed ({exc})", "re-export the bundle") from exc


def describe(engine: EngineConfig) -> str:
    b, s = engine.batch, engine.sequence
    return f"batch {b.minimum}-{b.maximum}, sequence {s.minimum}-{s.maximum}"


def outside(engine: EngineConfig, batch: int, seq_len: int) -> str | None:
    """Why an engine with this profile cannot run [batch, seq_len] (None: it can)."""
    b, s = engine.batch, engine.sequence
    if b.minimum <= batch <= b.maximum and s.minimum <= seq_len <= s.maximum:
        return None
    return f"batch {batch}, sequence {seq_len} is outside the engine's profile ({describe(engine)})"


def _shape(feeds: Feeds) -> tuple[int, int]:
    rows, seq_len = next(iter(feeds.values())).shape[:2]
    return int(rows), int(seq_len)


def cut_to_profile(batches: Iterable[Feeds], engine: EngineConfig) -> Iterator[Feeds]:
    """Batches no larger than the profile's maximum batch and sequence: rows past the maximum
    start a batch of their own, tokens past the maximum sequence are dropped (for every runtime
    compared, so both still see the same input)."""
    rows_max, seq_max = engine.batch.maximum, engine.sequence.maximum
    for feeds in batches:
        rows, _ = _shape(feeds)
        for start in range(0, rows, rows_max):
            yield {name: np.ascontiguousarray(value[start : start + rows_max, :seq_max]) for name, value in feeds.items()}


def pad_to_profile(feeds: Feeds, engine: EngineConfig, pad_id: int) -> Feeds:
    """A batch raised to the profile's minimum batch and sequence: rows repeated (a real row, not
    an empty one: an all-masked row is not a sentence), tokens padded as the tokenizer pads
    (``pad_id``, attention mask 0, token type 0) so the real tokens' outputs do not change."""
    rows, seq_len = _shape(feeds)
    more_rows = max(0, engine.batch.minimum - rows)
    more_tokens = max(0, engine.sequence.minimum - seq_len)
    padded: Feeds = {}
    for name, value in feeds.items():
        if more_tokens:
            fill = pad_id if name == "input_ids" else 0
            value = np.pad(value, ((0, 0), (0, more_tokens)), constant_values=fill)
        if more_rows:
            value = value[np.arange(rows + more_rows) % rows]
        padded[name] = np.ascontiguousarray(value)
    return padded


class ProfileFit(Runner):
    """An engine behind the Runner contract that also takes batches below its profile's minimum:
    pads them up (``pad_to_profile``) and returns the outputs of the real rows and tokens only.
    Batches above the maximum are refused: cut them first (``cut_to_profile``)."""

    def __init__(self, inner: Runner, engine: EngineConfig, pad_id: int = 0) -> None:
        super().__init__()
        self.name = inner.name
        self._inner, self._engine, self._pad_id = inner, engine, pad_id

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inner.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._inner.output_names

    def activate(self) -> None:
        self._inner.activate()
        super().activate()

    def deactivate(self) -> None:
        self._inner.deactivate()
        super().deactivate()

    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        rows, seq_len = _shape(feeds)
        if rows > self._engine.batch.maximum or seq_len > self._engine.sequence.maximum:
            raise ValueError(f"{outside(self._engine, rows, seq_len)}: cut the batch with cut_to_profile first")
        outputs = self._inner.infer(pad_to_profile(feeds, self._engine, self._pad_id))
        # token-level outputs are [batch, sequence, ...]; pooled ones and logits [batch, ...]
        return {name: value[:rows, :seq_len] if value.ndim >= 3 else value[:rows] for name, value in outputs.items()}

