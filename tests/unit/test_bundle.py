"""Atomic bundle writes: refusal without --force, rollback on failure, no staging left behind."""

import json

import pytest

from optimize import bundle
from optimize.errors import BundleError, InputError


def _write(dest, force, marker):
    with bundle.staged(dest, force) as staging:
        (staging / "model.onnx").write_text(marker)
        bundle.write_manifest(staging, {"target": "test"})


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_write_then_refuse_without_force(tmp_path):
    dest = tmp_path / "out"
    _write(dest, False, "one")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format"] == bundle.FORMAT and "model.onnx" in manifest["files"]
    with pytest.raises(BundleError, match="--force"):
        _write(dest, False, "two")
    assert (dest / "model.onnx").read_text() == "one"


def test_force_replaces_a_bundle(tmp_path):
    dest = tmp_path / "out"
    _write(dest, False, "one")
    _write(dest, True, "two")
    assert (dest / "model.onnx").read_text() == "two"
    assert _leftovers(tmp_path) == []


def test_failure_inside_the_write_keeps_the_previous_bundle(tmp_path):
    dest = tmp_path / "out"
    _write(dest, False, "one")
    with pytest.raises(KeyboardInterrupt):
        with bundle.staged(dest, True) as staging:
            (staging / "model.onnx").write_text("half")
            raise KeyboardInterrupt
    assert (dest / "model.onnx").read_text() == "one"
    assert _leftovers(tmp_path) == []


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="not an optimize bundle"):
        bundle.preflight(precious, force=True)


def test_output_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        bundle.preflight(tmp_path / "file", force=True)
    with pytest.raises(InputError, match="is a file"):
        bundle.preflight(tmp_path / "file" / "out", force=False)


def test_stale_staging_of_a_dead_process_is_swept(tmp_path):
    stale = tmp_path / ".out.tmp-999999999-abc"
    stale.mkdir()
    _write(tmp_path / "out", False, "one")
    assert not stale.exists()


def test_read_bundle_rejects_non_bundles(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        bundle.read_bundle(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not an optimize bundle"):
        bundle.read_bundle(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        bundle.read_bundle(tmp_path / "bad")


def test_an_interrupt_after_the_swap_says_the_bundle_was_written(tmp_path):
    """A signal blocked during the swap is delivered right after it: the line must not claim that
    nothing was written."""
    from optimize import bundle, cli

    bundle.COMMITTED.clear()
    cli._signals_received.clear()  # another test's SIGTERM would make it "terminated by SIGTERM after"
    assert "nothing was written" in cli._interrupt_line()
    with bundle.staged(tmp_path / "out", force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    line = cli._interrupt_line()
    assert "nothing was written" not in line and str(tmp_path / "out") in line and line.startswith("error: interrupted after")
    bundle.COMMITTED.clear()
