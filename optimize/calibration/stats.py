"""Activation statistics, accumulated batch by batch (after ORT's ``calibrate.py`` collectors).

Only statistics are kept, never the activations: a running min and max, a per-channel
absolute maximum (for outlier migration), and a fixed-size histogram of values whose range
doubles (merging bin pairs) when a batch exceeds it. Memory is independent of how much text
is calibrated on. Padded token positions are left out: they are not real data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from optimize.config import SessionConfig
from optimize.runtimes.base import Feeds

#: histogram resolution: 2048 bins on each side of zero.
HALF_BINS = 2048


@dataclass
class TensorStats:
    """Running statistics of one activation tensor over real tokens."""

    name: str
    count: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    channel_absmax: np.ndarray | None = None
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None
    #: histogram over [-limit, limit] with 2 * HALF_BINS bins; None until the first batch.
    hist: np.ndarray | None = None
    limit: float = 0.0
    nonfinite: int = 0
    #: per-channel extremes (for outlier migration): False skips them.
    channels: bool = True
    #: the value histogram (for percentile and entropy ranges): False skips it.
    histogram: bool = True
    dtype: str = ""
    ragged_channels: bool = False

    def update(self, values: np.ndarray) -> None:
        """Fold in a 2-D [tokens, channels] (or 1-D) array of real-token values."""
        if not np.issubdtype(values.dtype, np.floating):
            self.dtype = self.dtype or str(values.dtype)
            return
        finite = np.isfinite(values)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            values = np.where(finite, values, 0.0)
        if values.size == 0:
            return
        self.dtype = self.dtype or str(values.dtype)
        values = values.astype(np.float32, copy=False)
        self.count += values.size
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if self.channels and values.ndim >= 2 and not self.ragged_channels:
            rows = values.reshape(-1, values.shape[-1])
            low, high = rows.min(axis=0), rows.max(axis=0)
            if self.channel_min is not None and self.channel_min.shape != low.shape:
                # the last axis is not channels (attention scores end in the sequence length)
                self.ragged_channels = True
                self.channel_min = self.channel_max = self.channel_absmax = None
            elif self.channel_min is None:
                self.channel_min, self.channel_max = low, high
            else:
                self.channel_min = np.minimum(self.channel_min, low)
                self.channel_max = np.maximum(self.channel_max, high)
            if not self.ragged_channels:
                self.channel_absmax = np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))
        if self.histogram:
            self._update_histogram(values.ravel())

    def _update_histogram(self, flat: np.ndarray) -> None:
        peak = float(np.abs(flat).max())
        if self.hist is None:
            self.limit = max(peak, 1e-8)
            self.hist = np.zeros(2 * HALF_BINS, dtype=np.int64)
        while peak > self.limit:  # double the range: merge neighbouring bins towards the centre
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros_like(self.hist)
            self.hist[HALF_BINS // 2 : HALF_BINS // 2 + HALF_BINS] = merged
            self.limit *= 2
        counts, _ = np.histogram(flat, bins=2 * HALF_BINS, range=(-self.limit, self.limit))
        self.hist += counts

    @property
    def absmax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))


@dataclass
class StatsReport:
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    batches: int = 0
    texts: int = 0


def _with_outputs(model: ir.Model, names: list[str]) -> bytes:
    proto = ir.to_proto(model)
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString()


def real_token_values(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[B, S, ...] activations -> [real tokens, channels]; other shapes flattened to rows."""
    if mask is not None and values.ndim >= 2 and values.shape[:2] == mask.shape:
        return values[mask.astype(bool)]
    return values.reshape(-1, values.shape[-1]) if values.ndim >= 2 else values.reshape(-1)


def collect(
    model: ir.Model,
    names: list[str],
    batches: Iterable[Feeds],
    session: SessionConfig = SessionConfig(),
    *,
    channels: bool = True,
    histogram: bool = True,
) -> StatsReport:
    """Run the graph over the batches and accumulate statistics of the named values."""
    import onnxruntime as ort

    from optimize.runtimes.ort import session_options

    options = session_options(session)
    sess = ort.InferenceSession(_with_outputs(model, names), options, providers=list(session.providers))
    inputs = [i.name for i in sess.get_inputs()]
    report = StatsReport({name: TensorStats(name, channels=channels, histogram=histogram) for name in names})
    for feeds in batches:
        outputs = sess.run(names, {k: feeds[k] for k in inputs})
        mask = feeds.get("attention_mask")
        for name, values in zip(names, outputs):
            report.tensors[name].update(real_token_values(values, mask))
        report.batches += 1
        report.texts += int(next(iter(feeds.values())).shape[0])
    return report
