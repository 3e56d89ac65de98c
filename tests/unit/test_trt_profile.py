"""A TensorRT engine's optimization profile on any machine: the profile a manifest records, `optimize
build`'s flags over it, comparison feeds cut and padded to fit it, and bench cells outside it."""

from __future__ import annotations

import numpy as np
import pytest

from optimize.bench.run import plan_cells, workload_outside
from optimize.cli import build_overrides
from optimize.config import EngineConfig, EngineOverrides, ShapeRange, Tolerances
from optimize.errors import BundleError, InputError
from optimize.runtimes.base import Runner
from optimize.runtimes.trt_profile import ProfileFit, cut_to_profile, outside, pad_to_profile, profile_shapes, recorded_engine

#: the profile of the trt_bundles fixture (tests/integration/test_tensorrt_ready.py)
PROFILE = EngineConfig(batch=ShapeRange(1, 4, 8), sequence=ShapeRange(8, 64, 128), workspace_mib=4096)


def _feeds(rows: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, seq_len), np.int64)
    mask[0, seq_len // 2 :] = 0
    return {
        "input_ids": rng.integers(100, 30000, (rows, seq_len)).astype(np.int64) * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros((rows, seq_len), np.int64),
    }


def _manifest(engine: EngineConfig = PROFILE, **extra) -> dict:
    section = {"profile": profile_shapes(["input_ids", "attention_mask", "token_type_ids"], engine), "workspace_mib": engine.workspace_mib}
    return {"runtime": "tensorrt", "target": "trt-fp16", "task": "feature-extraction", "tensorrt": section, **extra}


def test_the_manifest_records_the_profile_and_workspace():
    assert recorded_engine(_manifest()) == PROFILE
    with pytest.raises(BundleError, match="no TensorRT optimization profile"):
        recorded_engine({"runtime": "tensorrt", "tensorrt": {"profile": {}}})


def test_parity_batches_of_16_fit_a_profile_of_at_most_8_rows_and_at_least_8_tokens():
    """The default comparison batches (16 texts padded to their longest) against the fixture's profile:
    set_input_shape refuses the first two as they come."""
    batches = [_feeds(16, 5), _feeds(16, 140, seed=1), _feeds(3, 40, seed=2)]
    assert [bool(outside(PROFILE, *b["input_ids"].shape)) for b in batches] == [True, True, False]
    fitted = list(cut_to_profile(batches, PROFILE))
    assert [f["input_ids"].shape for f in fitted] == [(8, 5), (8, 5), (8, 128), (8, 128), (3, 40)]
    # rows keep their order, and tokens past the maximum go for every runtime alike
    np.testing.assert_array_equal(np.concatenate([f["input_ids"] for f in fitted[2:4]]), batches[1]["input_ids"][:, :128])
    for feeds in fitted:
        padded = pad_to_profile(feeds, PROFILE, pad_id=0)
        assert outside(PROFILE, *padded["input_ids"].shape) is None


def test_padding_repeats_real_rows_and_masks_the_added_tokens():
    feeds = _feeds(1, 5)
    padded = pad_to_profile(feeds, EngineConfig(batch=ShapeRange(3, 3, 8), sequence=ShapeRange(8, 8, 16)), pad_id=7)
    assert padded["input_ids"].shape == (3, 8)
    np.testing.assert_array_equal(padded["input_ids"][:, :5], np.repeat(feeds["input_ids"], 3, axis=0))
    assert (padded["input_ids"][:, 5:] == 7).all()
    assert (padded["attention_mask"][:, 5:] == 0).all() and (padded["token_type_ids"][:, 5:] == 0).all()
    assert padded["attention_mask"][:, :5].sum() == 3 * feeds["attention_mask"].sum()


class ShapeRecorder(Runner):
    """Our own runner (no library behind it): records what it is fed; token outputs echo the ids."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")
    output_names = ("last_hidden_state", "pooled")

    def __init__(self):
        super().__init__()
        self.shapes = []

    def _infer(self, feeds):
        ids = feeds["input_ids"].astype(np.float32)
        self.shapes.append(ids.shape)
        return {"last_hidden_state": ids[..., None] * np.ones(4, np.float32), "pooled": ids.sum(axis=1, keepdims=True)}


def test_profile_fit_feeds_the_engine_in_profile_and_returns_the_real_rows_and_tokens():
    inner = ShapeRecorder()
    runner = ProfileFit(inner, PROFILE, pad_id=0)
    feeds = _feeds(2, 5)
    outputs = runner.infer(feeds)
    assert inner.shapes == [(2, 8)]  # batch 2 is in profile; 5 tokens are padded to the minimum 8
    assert outputs["last_hidden_state"].shape == (2, 5, 4) and outputs["pooled"].shape == (2, 1)
    np.testing.assert_array_equal(outputs["last_hidden_state"][..., 0], feeds["input_ids"])
    with pytest.raises(ValueError, match="cut_to_profile"):
        runner.infer(_feeds(9, 16))


@pytest.mark.parametrize(
    ("batch", "seq_len", "workspace", "expected"),
    [
        (None, None, None, PROFILE),
        (None, None, 1024, EngineConfig(PROFILE.batch, PROFILE.sequence, 1024)),
        ("2,4,16", None, None, EngineConfig(ShapeRange(2, 4, 16), PROFILE.sequence, 4096)),
        ("16", None, None, EngineConfig(ShapeRange(16, 16, 16), PROFILE.sequence, 4096)),
        (None, "256", None, EngineConfig(PROFILE.batch, ShapeRange(1, 256, 256), 4096)),
        (None, "16,64,256", 512, EngineConfig(PROFILE.batch, ShapeRange(16, 64, 256), 512)),
    ],
)
def test_each_build_flag_overrides_only_its_own_part_of_the_recorded_engine(batch, seq_len, workspace, expected):
    assert build_overrides(batch, seq_len, workspace).applied_to(recorded_engine(_manifest())) == expected


def test_a_malformed_build_flag_is_bad_input():
    with pytest.raises(InputError, match="--batch takes"):
        build_overrides("8,4,2", None, None)
    assert EngineOverrides().applied_to(PROFILE) is not None


def test_bench_skips_cells_outside_a_tensorrt_profile_with_one_note_each():
    notes: list[str] = []
    kept = plan_cells((1, 8, 64), (4, 128), {"out/bert-trt": PROFILE}, notes)
    assert kept == [(1, 128), (8, 128)]
    assert len(notes) == 4 and all(n.startswith("skipped batch") and "out/bert-trt" in n and "\n" not in n for n in notes)
    assert any("batch 64, sequence 128" in n and "batch 1-8, sequence 8-128" in n for n in notes)


def test_bench_refuses_when_no_cell_fits():
    with pytest.raises(InputError, match="optimization profile") as caught:
        plan_cells((64,), (128,), {"out/bert-trt": PROFILE}, [])
    assert "optimize build" in caught.value.one_line()


def test_bench_without_tensorrt_bundles_keeps_every_cell():
    assert plan_cells((1, 64), (4, 600), {}, []) == [(1, 4), (1, 600), (64, 4), (64, 600)]


def test_a_real_length_workload_shorter_than_the_profile_is_skipped():
    assert workload_outside([_feeds(8, 20), _feeds(8, 5)], {"b": PROFILE}).startswith("b: a batch of batch 8, sequence 5")
    assert workload_outside([_feeds(8, 20)], {"b": PROFILE}) is None


def test_the_engine_is_held_to_the_tolerances_export_parity_was_judged_by():
    from optimize.api import engine_tolerances

    budget = Tolerances(cosine_mean=0.985, cosine_min=0.95, neighbour_agreement=0.9)
    recorded = {"parity": {"tolerances": {**budget.__dict__}}}
    assert engine_tolerances(_manifest(target="trt-int8", **recorded)) == budget
    # a pruned bundle's recorded tolerances were loosened for the cut; the engine gets the target's own
    pruned = engine_tolerances(_manifest(target="trt-int8", pruning={"fraction": 0.3}, **recorded))
    assert (pruned.cosine_mean, pruned.cosine_min, pruned.neighbour_agreement) == (0.99, 0.97, 0.95)
    fp16 = engine_tolerances(_manifest(target="trt-fp16"))
    assert (fp16.cosine_mean, fp16.cosine_min) == (0.9999, 0.9995)
