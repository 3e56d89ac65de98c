"""--train-device: recovery and quantization-aware distillation train where they are asked to, hand
back CPU modules, and a device that cannot be used is refused before any work.

The CUDA tests run where PyTorch sees a GPU (they passed on an H200: benchmarks/NOTES.md, "A second
machine") and are skipped elsewhere; the refusals run where it sees none."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cli_helpers import assert_one_line_error, optimize
from optimize.api import export_model, parity_batches
from optimize.calibration.batches import length_bucketed_batches
from optimize.calibration.corpus import calibration_texts
from optimize.config import CalibrationConfig, PruneConfig, QuantConfig, TrainingConfig
from optimize.errors import InputError
from optimize.exporter import resolve
from optimize.pruning import prune
from optimize.pruning.recover import distil
from optimize.training import training_device, training_failed

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="PyTorch sees no CUDA device")
needs_no_cuda = pytest.mark.skipif(CUDA, reason="PyTorch sees a CUDA device")


def test_auto_takes_a_gpu_when_there_is_one_and_names_are_checked():
    assert training_device("auto") == ("cuda" if CUDA else "cpu")
    assert training_device(" CPU ") == "cpu"
    for bad in ("tpu", "cuda:x", "cpu:0", "", "mps", "cuda:", "cuda:01", "cuda:\u00b2", "auto:0"):
        with pytest.raises(InputError) as refused:
            training_device(bad)
        assert "--train-device" in refused.value.problem and "cuda:N" in refused.value.fix, bad


def test_a_failure_of_gpu_training_is_one_line_that_names_the_cpu():
    failure = training_failed("cuda", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert failure is not None and failure.one_line() == (
        "training on cuda failed: CUDA out of memory. Tried to allocate 2.00 GiB; pass --train-device cpu"
    )
    assert training_failed("cuda:1", RuntimeError("CUDA error: an illegal memory access was encountered")) is not None
    assert training_failed("cpu", torch.cuda.OutOfMemoryError("CUDA out of memory")) is None  # not a GPU's failure
    assert training_failed("cuda", ValueError("a bug")) is None  # a bug stays a bug


@needs_no_cuda
def test_an_absent_gpu_is_refused_in_one_line_before_the_model_is_loaded(tmp_path):
    # a model folder with no weights: loading it would fail, so the device's error shows it is checked first
    unloadable = tmp_path / "no-weights"
    unloadable.mkdir()
    (unloadable / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    for device in ("cuda", "cuda:1", "auto:0"):
        result = optimize("export", str(unloadable), "--prune", "0.3", "--recover", "5", "--train-device", device, "--output", str(tmp_path / "o"))
        fragments = ("unknown --train-device 'auto:0'",) if device == "auto:0" else (f"--train-device {device}", "sees no CUDA device", "--train-device cpu")
        assert_one_line_error(result, *fragments, code=2)
    result = optimize("tune", str(unloadable), "--train-device", "tpu", "--output", str(tmp_path / "o"))
    assert_one_line_error(result, "unknown --train-device 'tpu'", code=2)
    assert not (tmp_path / "o").exists()


@needs_no_cuda
def test_a_gpu_asked_for_where_nothing_trains_is_not_needed(tiny_model_dir, quick_job, tmp_path):
    job = dataclasses.replace(quick_job(str(tiny_model_dir("bert")), tmp_path / "o"), training=TrainingConfig(device="cuda"))
    assert export_model(job).parity.ok


def _on_cpu(*modules) -> bool:
    return all(t.device.type == "cpu" for m in modules for t in (*m.parameters(), *m.buffers()))


@needs_cuda
def test_recovery_trains_on_the_gpu_and_hands_back_cpu_modules(tiny_model_dir, quick_job, tmp_path):
    loaded = resolve(str(tiny_model_dir("bert")))
    sets = {p.texts.key: p.batches for p in parity_batches(loaded, quick_job(str(tiny_model_dir("bert")), tmp_path / "o"))}
    config = PruneConfig(fraction=0.4, reconstruct=False, recover_steps=30)
    outcome = prune(loaded, config, CalibrationConfig(size=64, seq_len=64), sets, device="cuda")
    recovery = outcome.report["recovery"]
    assert recovery["device"].startswith("cuda (") and recovery["loss_last"] < recovery["loss_first"] / 2, recovery
    similarity = outcome.report["pytorch_similarity"]
    assert similarity["after_recovery"]["cosine_mean"] > similarity["after_reconstruction"]["cosine_mean"]
    assert _on_cpu(outcome.loaded.module, loaded.module)


@needs_cuda
def test_an_interrupted_gpu_training_still_hands_back_cpu_modules(tiny_model_dir):
    loaded = resolve(str(tiny_model_dir("bert")))
    student = copy.deepcopy(loaded.module)
    texts = calibration_texts(None, 64)

    def batches(epoch: int):
        return length_bucketed_batches(loaded.tokenizer, texts, loaded.input_names, batch_size=8, seq_len=64, seed=epoch)

    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distil(student, loaded.module, batches, 10, classifier=False, progress=interrupt, device="cuda")
    assert _on_cpu(student, loaded.module)


@needs_cuda
def test_qat_trains_on_the_gpu_into_an_int8_bundle_within_parity(tiny_model_dir, quick_job, tmp_path):
    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "o", target="ort-int8")
    job = dataclasses.replace(job, quant=QuantConfig(qat_steps=20), training=TrainingConfig(device="cuda"))
    outcome = export_model(job)
    qat = outcome.manifest["qat"]
    assert qat["device"].startswith("cuda (") and qat["steps"] == 20, qat
    assert any(r["learned"] != r["start"] for r in qat["ranges"]), "no activation range moved: nothing trained"
    assert outcome.parity.ok, outcome.parity.summary()
