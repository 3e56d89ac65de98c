import numpy as np

from optimize.calibration.ranges import entropy_threshold, percentile_range, quant_params, quantize_weight, value_range
from optimize.calibration.stats import TensorStats, real_token_values


def test_streamed_statistics_equal_the_whole_array():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0, 1 + i, (50, 8)).astype(np.float32) for i in range(5)]  # range grows per batch
    stats = TensorStats("x")
    for chunk in chunks:
        stats.update(chunk)
    whole = np.concatenate(chunks)
    assert stats.count == whole.size
    assert stats.minimum == whole.min() and stats.maximum == whole.max()
    np.testing.assert_array_equal(stats.channel_absmax, np.abs(whole).max(axis=0))
    assert stats.hist.sum() == whole.size  # re-binning as the range doubled lost nothing


def test_padding_is_not_data():
    values = np.zeros((2, 3, 4), np.float32)
    values[1, 2] = 1000.0  # a padded position
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    assert real_token_values(values, mask).max() == 0.0


def test_percentile_and_entropy_clip_a_heavy_tail_that_minmax_keeps():
    rng = np.random.default_rng(1)
    stats = TensorStats("x")
    stats.update(np.concatenate([rng.normal(0, 1, 200_000), [80.0]]).astype(np.float32)[:, None])
    assert value_range(stats, "minmax")[1] == 80.0
    assert percentile_range(stats)[1] < 10.0
    assert entropy_threshold(stats) < 20.0


def test_quant_params_cover_the_range_and_zero():
    asym = quant_params(-1.0, 3.0, symmetric=False)
    assert asym.dtype == np.uint8 and 0 <= asym.zero_point <= 255
    assert abs((0 - asym.zero_point) * asym.scale + 1.0) < asym.scale
    assert abs((255 - asym.zero_point) * asym.scale - 3.0) < asym.scale
    sym = quant_params(-1.0, 3.0, symmetric=True)
    assert sym.zero_point == 0 and sym.dtype == np.int8 and abs(sym.scale * 127 - 3.0) < 1e-6


def test_weight_quantization_error_is_at_most_half_a_step_per_channel():
    weight = np.random.default_rng(2).normal(0, 0.05, (64, 16)).astype(np.float32)
    weight[:, 3] *= 40  # one loud output channel must not coarsen the others
    quantized, scales = quantize_weight(weight, axis=1)
    assert quantized.dtype == np.int8 and scales.shape == (16,)
    error = np.abs(quantized * scales - weight)
    assert (error <= scales / 2 + 1e-7).all()
