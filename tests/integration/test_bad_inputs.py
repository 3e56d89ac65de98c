"""Bad input through the real command: one `error:` line naming the problem and the fix, a
non-zero exit, no traceback, and nothing written or lost."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

from cli_helpers import assert_one_line_error, optimize


@pytest.fixture(scope="module")
def small_bundle(tiny_bundle):
    """A real ort-fp32 bundle of a tiny BERT, the session's shared one (conftest.py): the tests
    below read it and never write into it."""
    return tiny_bundle("feature-extraction")[1]


def _export(model: str, out: Path, *flags: str):
    return optimize("export", model, "--output", str(out), "--no-speed", "--seq-len", "64", "--parity-size", "16", *flags)


# --- export: the model reference -------------------------------------------------------------


def test_missing_model_path(tmp_path):
    result = _export(str(tmp_path / "no-such-model"), tmp_path / "out")
    assert_one_line_error(result, "does not exist", "bert", code=2)
    assert not (tmp_path / "out").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_export(str(tmp_path / "empty"), tmp_path / "out"), "config.json", code=2)


def test_unsupported_architecture_lists_the_supported(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    line = assert_one_line_error(_export(str(folder), tmp_path / "out"), "gpt2", code=2)
    assert "bert" in line and "distilbert" in line and "roberta" in line


def test_corrupt_config_json(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    assert_one_line_error(_export(str(folder), tmp_path / "out"), "config.json", code=2)


def test_hub_id_offline_names_the_local_alternative(tmp_path):
    line = assert_one_line_error(_export("someone/not-cached-bert", tmp_path / "out"), "someone/not-cached-bert", code=2)
    assert "folder" in line


def test_weights_missing_from_folder(tiny_model_dir, tmp_path):
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir("bert"), folder)
    for weights in list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")):
        weights.unlink()
    assert_one_line_error(_export(str(folder), tmp_path / "out"), "weights", code=2)


# --- export: flags ---------------------------------------------------------------------------


def test_unknown_target_suggests_the_nearest(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--target", "ort-fp33"), "ort-fp33", "did you mean ort-fp32", code=2)


def test_unknown_task(tiny_model_dir, tmp_path):
    assert_one_line_error(_export(str(tiny_model_dir("bert")), tmp_path / "out", "--task", "summarization"), "summarization", code=2)


def test_sequence_longer_than_the_model_allows(tiny_model_dir, tmp_path):
    result = optimize("export", str(tiny_model_dir("bert")), "--output", str(tmp_path / "out"), "--no-speed", "--seq-len", "100000")
    assert_one_line_error(result, "--seq-len", "100000", code=2)


def test_malformed_profile_ranges(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--batch", "8,4,2"), "--batch", "MIN,OPT,MAX", code=2)


def test_threads_must_be_positive(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--threads", "0"), "--threads", code=2)


def test_budget_outside_zero_one(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--target", "ort-int8", "--min-cosine", "1.5"), "--min-cosine", code=2)


def test_unknown_calibration_method(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--target", "ort-int8", "--calibration-method", "magic"), "magic", code=2)


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2"])
def test_prune_fraction_outside_zero_one(fraction, tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--prune", fraction), "--prune", code=2)


def test_unknown_flag_is_a_usage_error(tmp_path):
    assert_one_line_error(_export("bert", tmp_path / "out", "--turbo"), "--turbo", code=2)


def test_missing_output(tmp_path):
    assert_one_line_error(optimize("export", "bert"), "--output", code=2)


# --- export: data files ----------------------------------------------------------------------


def test_empty_calibration_file(tiny_model_dir, tmp_path):
    empty = tmp_path / "calibration.txt"
    empty.write_text("\n  \n")
    result = _export(str(tiny_model_dir("bert")), tmp_path / "out", "--target", "ort-int8", "--calibration", str(empty))
    assert_one_line_error(result, "calibration", str(empty), code=2)
    assert not (tmp_path / "out").exists()


def test_calibration_file_with_invalid_utf8(tiny_model_dir, tmp_path):
    bad = tmp_path / "calibration.txt"
    bad.write_bytes(b"fine text\n\xff\xfe broken \xc3\x28 bytes\n")
    result = _export(str(tiny_model_dir("bert")), tmp_path / "out", "--target", "ort-int8", "--calibration", str(bad))
    assert_one_line_error(result, "UTF-8", code=2)


def test_missing_calibration_file(tiny_model_dir, tmp_path):
    result = _export(str(tiny_model_dir("bert")), tmp_path / "out", "--target", "ort-int8", "--calibration", str(tmp_path / "nope.txt"))
    assert_one_line_error(result, "nope.txt", code=2)


def test_empty_parity_text(tiny_model_dir, tmp_path):
    empty = tmp_path / "parity.txt"
    empty.write_text("")
    assert_one_line_error(_export(str(tiny_model_dir("bert")), tmp_path / "out", "--parity-text", str(empty)), "parity", code=2)


# --- export: the output ----------------------------------------------------------------------


def test_output_path_is_a_file(tiny_model_dir, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert_one_line_error(_export(str(tiny_model_dir("bert")), target), "is a file", code=2)
    assert target.read_text() == "keep me"


def test_output_inside_a_file(tiny_model_dir, tmp_path):
    (tmp_path / "a-file").write_text("keep me")
    assert_one_line_error(_export(str(tiny_model_dir("bert")), tmp_path / "a-file" / "out"), "is a file", code=2)


def test_existing_bundle_without_force(small_bundle, tiny_model_dir):
    before = (small_bundle / "manifest.json").read_bytes()
    assert_one_line_error(_export(str(tiny_model_dir("bert")), small_bundle), "already exists", "--force", code=7)
    assert (small_bundle / "manifest.json").read_bytes() == before


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tiny_model_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert_one_line_error(_export(str(tiny_model_dir("bert")), precious, "--force"), "not an optimize bundle", code=7)
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_unwritable_output_folder(tiny_model_dir):
    # /sys refuses new folders even to root, which CI runs as
    assert_one_line_error(_export(str(tiny_model_dir("bert")), Path("/sys/optimize-out")), "/sys", code=7)


@contextlib.contextmanager
def _tiny_filesystem(tmp_path: Path):
    """A 2 MB tmpfs if this machine lets us mount one (root in CI), else None."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    try:
        yield mount if done.returncode == 0 else None
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_full_disk(tiny_model_dir, tmp_path):
    with _tiny_filesystem(tmp_path) as disk:
        if disk is not None:
            result = _export(str(tiny_model_dir("bert")), disk / "out")
            leftovers = list(disk.iterdir())
        else:  # no mount rights: a per-process file size limit fails writes the same way (EFBIG)
            limit = 2 << 20
            env_out = tmp_path / "out"
            done = subprocess.run(
                [os.sys.executable, "-m", "optimize", "export", str(tiny_model_dir("bert")), "--output", str(env_out),
                 "--no-speed", "--seq-len", "64", "--parity-size", "16"],
                capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
            )
            from cli_helpers import Result

            result = Result(done.returncode, done.stdout, done.stderr)
            leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert_one_line_error(result, "disk", code=7)
    assert leftovers == []


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_missing_file(tmp_path):
    assert_one_line_error(optimize("inspect", str(tmp_path / "model.onnx")), "does not exist", code=2)


def test_inspect_corrupt_onnx(tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07\x12\x04junk" + os.urandom(256))
    assert_one_line_error(optimize("inspect", str(corrupt)), "not a valid ONNX file", code=2)


def test_inspect_truncated_onnx(small_bundle, tmp_path):
    data = (small_bundle / "model.onnx").read_bytes()
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(optimize("inspect", str(truncated)), str(truncated), code=2)


def test_inspect_empty_onnx(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    assert_one_line_error(optimize("inspect", str(tmp_path / "model.onnx")), "empty", code=2)


def _external_model(small_bundle: Path, folder: Path) -> onnx.ModelProto:
    """The tiny bundle's model with its largest weight moved to external data."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(small_bundle / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (folder / "weights.bin").write_bytes(biggest.raw_data)
    length = len(biggest.raw_data)
    biggest.ClearField("raw_data")
    biggest.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(length))):
        entry = biggest.external_data.add()
        entry.key, entry.value = key, value
    return model


def _point_external(model: onnx.ModelProto, location: str) -> None:
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "location").value = location


def test_inspect_external_data_outside_the_folder(small_bundle, tmp_path):
    model = _external_model(small_bundle, tmp_path / "m")
    (tmp_path / "secret.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    _point_external(model, "../secret.bin")
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    assert_one_line_error(optimize("inspect", str(tmp_path / "m" / "model.onnx")), "outside its folder", code=2)


def test_inspect_external_data_absolute_path(small_bundle, tmp_path):
    model = _external_model(small_bundle, tmp_path / "m")
    _point_external(model, "/etc/passwd")
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    assert_one_line_error(optimize("inspect", str(tmp_path / "m" / "model.onnx")), "outside its folder", code=2)


def test_inspect_external_data_through_a_symlink(small_bundle, tmp_path):
    model = _external_model(small_bundle, tmp_path / "m")
    (tmp_path / "elsewhere.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    (tmp_path / "m" / "link.bin").symlink_to(tmp_path / "elsewhere.bin")
    _point_external(model, "link.bin")
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    assert_one_line_error(optimize("inspect", str(tmp_path / "m" / "model.onnx")), "symlink", code=2)


def test_inspect_external_data_truncated(small_bundle, tmp_path):
    model = _external_model(small_bundle, tmp_path / "m")
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    (tmp_path / "m" / "weights.bin").write_bytes(b"\0" * 16)
    assert_one_line_error(optimize("inspect", str(tmp_path / "m" / "model.onnx")), "past the end", code=2)


def test_inspect_a_folder_that_is_not_a_bundle(tmp_path):
    assert_one_line_error(optimize("inspect", str(tmp_path)), "not", code=2)


def test_inspect_bundle_with_corrupt_manifest(small_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    (copy / "manifest.json").write_text("{")
    assert_one_line_error(optimize("inspect", str(copy)), "corrupt", code=7)


# --- bench and build -------------------------------------------------------------------------


def test_bench_missing_bundle(tmp_path):
    assert_one_line_error(optimize("bench", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist", code=2)


def test_bench_bad_shapes(small_bundle, tmp_path):
    assert_one_line_error(optimize("bench", str(small_bundle), "--seq", "abc", "--out", str(tmp_path / "o")), "--seq", code=2)


def test_bench_sequence_beyond_the_model(small_bundle, tmp_path):
    result = optimize("bench", str(small_bundle), "--seq", "100000", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "100000", code=2)


def test_bench_merge_corrupt_json(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    assert_one_line_error(optimize("bench", "--merge", str(tmp_path / "a.json")), "a.json", code=2)


def test_build_refuses_an_onnx_runtime_bundle(small_bundle):
    assert_one_line_error(optimize("build", str(small_bundle)), "trt-", code=2)


def test_build_missing_bundle(tmp_path):
    assert_one_line_error(optimize("build", str(tmp_path / "nope")), "does not exist", code=2)
