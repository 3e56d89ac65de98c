"""The comparator on outputs we control exactly (the runners here are ours, not a library's)."""

import numpy as np
import pytest

from optimize.config import Tolerances
from optimize.parity import ParityReport, compare, mean_pool
from optimize.runtimes.base import Runner


class ArrayRunner(Runner):
    """Returns a fixed function of the feeds: the reference, or a perturbed candidate."""

    def __init__(self, fn, output="last_hidden_state"):
        super().__init__()
        self.fn, self.output = fn, output

    input_names = ("input_ids", "attention_mask")
    output_names = ("last_hidden_state",)

    def _infer(self, feeds):
        return {self.output: self.fn(feeds)}


def _batches(n_batches=3, batch=4, seq=6):
    rng = np.random.default_rng(0)
    for _ in range(n_batches):
        mask = np.ones((batch, seq), np.int64)
        mask[0, 3:] = 0
        yield {"input_ids": rng.integers(0, 50, (batch, seq)), "attention_mask": mask}


def _hidden(feeds):
    ids = feeds["input_ids"].astype(np.float32)
    return np.stack([np.sin(ids * k) for k in range(1, 9)], axis=-1)


def test_identical_outputs_pass_every_tolerance():
    report = compare(ArrayRunner(_hidden), ArrayRunner(_hidden), _batches(), task="feature-extraction",
                     output="last_hidden_state", tolerances=Tolerances())
    assert report.ok and report.samples == 12
    assert report.cosine_min == pytest.approx(1.0) and report.neighbour_agreement == 1.0
    assert report.max_abs_error == 0.0


def test_padding_positions_do_not_count():
    def garbage_in_padding(feeds):
        out = _hidden(feeds)
        out[feeds["attention_mask"] == 0] = 1e6
        return out

    report = compare(ArrayRunner(_hidden), ArrayRunner(garbage_in_padding), _batches(), task="feature-extraction",
                     output="last_hidden_state", tolerances=Tolerances())
    assert report.ok


def test_perturbed_candidate_fails_with_named_metrics():
    noisy = lambda feeds: _hidden(feeds) + np.random.default_rng(1).normal(0, 0.3, _hidden(feeds).shape)  # noqa: E731
    report = compare(ArrayRunner(_hidden), ArrayRunner(noisy), _batches(), task="feature-extraction",
                     output="last_hidden_state", tolerances=Tolerances(max_abs_error=0.01))
    assert not report.ok
    assert any(f.startswith("cosine min") for f in report.failures)
    assert any(f.startswith("max abs error") for f in report.failures)


def test_nan_always_fails():
    def with_nan(feeds):
        out = _hidden(feeds)
        out[0, 0, 0] = np.nan
        return out

    report = compare(ArrayRunner(_hidden), ArrayRunner(with_nan), _batches(), task="feature-extraction",
                     output="last_hidden_state", tolerances=Tolerances(cosine_mean=0, cosine_min=0, neighbour_agreement=0))
    assert report.nonfinite == 3 and not report.ok


def test_classification_label_agreement():
    logits = lambda feeds: np.stack([feeds["input_ids"].sum(1), -feeds["input_ids"].sum(1)], 1).astype(float)  # noqa: E731
    flipped = lambda feeds: -logits(feeds)  # noqa: E731
    report = compare(ArrayRunner(logits, "logits"), ArrayRunner(flipped, "logits"), _batches(), task="text-classification",
                     output="logits", tolerances=Tolerances(cosine_mean=-1, cosine_min=-1))
    assert report.label_agreement == 0.0 and not report.ok


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert mean_pool(hidden, np.array([[1, 1, 0]])).tolist() == [[2.0, 2.0]]


def test_unseen_domain_gap_is_said_only_when_it_is_much_worse():
    import dataclasses

    from optimize.api import unseen_domain_gap

    seen = ParityReport("feature-extraction", 256, 0.990, 0.95, 0.9, None, 0.1, 0, Tolerances(), texts="held out")
    close = dataclasses.replace(seen, cosine_mean=0.985, texts="unseen domain: movie reviews")
    far = dataclasses.replace(seen, cosine_mean=0.96, texts="unseen domain: movie reviews")
    assert unseen_domain_gap(seen, None) is None
    assert unseen_domain_gap(seen, close) is None  # 1.5x the loss: not "much worse"
    line = unseen_domain_gap(seen, far)
    assert line is not None and "0.9600" in line and "--calibration FILE" in line


def test_neighbour_agreement_allows_near_ties_and_reports_the_exact_figure():
    from optimize.parity import NEIGHBOUR_TIE, neighbour_agreement

    # text 0's two nearest (1 and 2) sit within the tie band of the reference; texts 3 and 4
    # are each other's nearest, far from the rest
    reference = np.array([[1.0, 0.0, 0.0], [0.9, 0.4359, 0.0], [0.9 - NEIGHBOUR_TIE / 4, 0.4409, 0.0], [0.0, 0.0, 1.0], [0.0, 0.1, 1.0]])
    candidate = reference.copy()
    candidate[0] = [0.9, 0.45, 0.0]  # now nearer to 2 than to 1: a swap inside the tie
    tie_aware, exact = neighbour_agreement(reference, candidate)
    assert exact < 1.0 and tie_aware == 1.0


def test_label_agreement_allows_coin_flips_of_the_reference_and_reports_the_exact_figure():
    from optimize.parity import label_agreement

    reference = np.array([[0.001, 0.0], [2.0, -2.0], [0.0, 0.0, 0.002][:2]])
    candidate = np.array([[0.0, 0.001], [-2.0, 2.0], [0.0, 0.0]])
    tie_aware, exact = label_agreement(reference, candidate)
    # row 0 flips inside the tie (p 0.50025 vs 0.49975), row 1 is a real flip, row 2 is the same
    assert tie_aware.tolist() == [True, False, True] and exact.tolist() == [False, False, True]

    # a span head picks among the real tokens only: a padded position's logit cannot win
    real = np.array([[True, True, False]])
    tie_aware, exact = label_agreement(np.array([[3.0, 0.0, 0.0]]), np.array([[3.0, 0.0, 9.0]]), real)
    assert tie_aware.tolist() == [True] and exact.tolist() == [True]
