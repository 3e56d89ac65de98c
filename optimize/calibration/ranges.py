"""From statistics to quantization parameters: minmax, percentile or entropy ranges.

The range computation is separate from the statistics (as in ORT's calibrate.py) and
returns a typed result. Activations are uint8 asymmetric (what ONNX Runtime's CPU kernels
want) or int8 symmetric with zero point 0 (what TensorRT wants); a linear layer's input under
the symmetric scheme is first centred (``centred_params``), so that it keeps the asymmetric
scheme's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimize.calibration.stats import HALF_BINS, TensorStats
from optimize.errors import PassError

METHODS = ("minmax", "percentile", "entropy")
PERCENTILE = 99.99


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor affine quantization: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    symmetric: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8) if self.symmetric else np.dtype(np.uint8)


def _bin_edges(stats: TensorStats) -> np.ndarray:
    return np.linspace(-stats.limit, stats.limit, 2 * HALF_BINS + 1)


def percentile_range(stats: TensorStats, percentile: float = PERCENTILE) -> tuple[float, float]:
    """Clip the tails: the values below and above which (100 - p)/2 % of the mass lies."""
    assert stats.hist is not None
    cumulative = np.cumsum(stats.hist) / max(stats.hist.sum(), 1)
    edges = _bin_edges(stats)
    tail = (100.0 - percentile) / 200.0
    low = edges[int(np.searchsorted(cumulative, tail))]
    high = edges[min(int(np.searchsorted(cumulative, 1.0 - tail)) + 1, len(edges) - 1)]
    return max(float(low), stats.minimum), min(float(high), stats.maximum)


def entropy_threshold(stats: TensorStats, levels: int = 128) -> float:
    """TensorRT's KL-divergence calibration on the |x| histogram: the clip threshold whose
    quantized distribution loses the least information."""
    assert stats.hist is not None
    magnitude = stats.hist[HALF_BINS:][::1].astype(np.float64) + stats.hist[:HALF_BINS][::-1]
    bins = len(magnitude)
    best_threshold, best_divergence = bins, np.inf
    for i in range(levels, bins + 1, 16):
        reference = magnitude[:i].copy()
        reference[i - 1] += magnitude[i:].sum()  # clipped mass lands in the last bin
        if reference.sum() == 0:
            continue
        # quantize the first i bins into `levels` buckets, then expand back over non-empty bins
        chunks = np.array_split(magnitude[:i], levels)
        expanded = []
        for chunk in chunks:
            nonzero = chunk != 0
            value = chunk.sum() / max(int(nonzero.sum()), 1)
            expanded.append(np.where(nonzero, value, 0.0))
        candidate = np.concatenate(expanded)
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-30)
        support = p > 0
        divergence = float(np.sum(p[support] * np.log(p[support] / np.maximum(q[support], 1e-12))))
        if divergence < best_divergence:
            best_divergence, best_threshold = divergence, i
    return (best_threshold + 0.5) * stats.limit / bins


def value_range(stats: TensorStats, method: str) -> tuple[float, float]:
    if method not in METHODS:
        raise PassError(f"unknown calibration method {method!r}", f"choose one of: {', '.join(METHODS)}")
    if stats.count == 0:
        raise PassError(f"no calibration data reached tensor {stats.name}", "pass more or longer calibration text")
    if method == "minmax":
        return stats.minimum, stats.maximum
    if method == "percentile":
        return percentile_range(stats)
    threshold = entropy_threshold(stats)
    return max(stats.minimum, -threshold), min(stats.maximum, threshold)


def quant_params(low: float, high: float, symmetric: bool) -> QuantParams:
    """Scale and zero point covering [low, high] (always including 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        bound = max(abs(low), abs(high), 1e-8)
        return QuantParams(bound / 127.0, 0, True)
    span = max(high - low, 1e-8)
    scale = span / 255.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    return QuantParams(scale, zero_point, False)


def centred_params(low: float, high: float) -> tuple[QuantParams, float]:
    """Symmetric int8 (zero point 0) for ``x + shift`` instead of ``x``, and that shift.

    Symmetric int8 spends half its codes on values a one-sided range never takes: a GELU's
    output, in [-0.17, 10], is quantized with a step of 10/127 where uint8 would take 10/255.
    Moving [low, high] to be centred on 0 gives the symmetric grid the asymmetric one's step,
    and a linear layer takes the shift back exactly in its bias, (x + c) W + (b - c 1W) = x W + b
    (after Outlier Suppression+, Wei et al. 2023, per tensor here). TensorRT still sees zero
    point 0; the shift is one constant Add before the QuantizeLinear, fused with the op
    before it.
    """
    shift = -(low + high) / 2.0
    bound = max((high - low) / 2.0, 1e-8)
    return QuantParams(bound / 127.0, 0, True), float(shift)


def activation_form(symmetric: bool, centred: bool) -> str:
    """How a graph's activations are quantized, as the manifest and the QAT report name it."""
    if not symmetric:
        return "uint8 asymmetric"
    return "int8 symmetric, linear inputs centred" if centred else "int8 symmetric"


def weight_scales(weight: np.ndarray, axis: int = 1) -> np.ndarray:
    """Symmetric int8 scales per output channel (columns of a [K, N] MatMul weight)."""
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    return np.maximum(np.abs(weight).max(axis=reduce_axes) / 127.0, 1e-12).astype(np.float32)


def quantize_weight(weight: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    scales = weight_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.round(weight / scales.reshape(shape)), -127, 127).astype(np.int8)
    return quantized, scales
