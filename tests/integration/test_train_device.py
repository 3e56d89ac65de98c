"""--train-device: recovery and quantization-aware distillation train where they are asked to, hand
back CPU modules, and a device that cannot be used is refused before any work.

The CUDA tests run where PyTorch sees a GPU (benchmarks/gpu_recovery.py's machine) and are skipped
elsewhere; the refusals run where it sees none."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cli_helpers import assert_one_line_error, optimize
from optimize.api import export_model, parity_batches
from optimize.config import CalibrationConfig, PruneConfig, QuantConfig, TrainingConfig
from optimize.errors import InputError
from optimize.exporter import resolve
from optimize.pruning import prune
from optimize.training import training_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="PyTorch sees no CUDA device")
needs_no_cuda = pytest.mark.skipif(CUDA, reason="PyTorch sees a CUDA device")


def test_auto_takes_a_gpu_when_there_is_one_and_names_are_checked():
    assert training_device("auto") == ("cuda" if CUDA else "cpu")
    assert training_device(" CPU ") == "cpu"
    for bad in ("tpu", "cuda:x", "cpu:0", "", "mps", "cuda:"):
        with pytest.raises(InputError) as refused:
            training_device(bad)
        assert "--train-device" in refused.value.problem and "cuda:N" in refused.value.fix, bad


@needs_no_cuda
def test_an_absent_gpu_is_refused_in_one_line_before_the_model_is_loaded(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("bert"))
    for device in ("cuda", "cuda:1"):
        result = optimize("export", model, "--prune", "0.3", "--recover", "5", "--train-device", device, "--output", str(tmp_path / "o"))
        assert_one_line_error(result, f"--train-device {device}", "sees no CUDA device", "--train-device cpu", code=2)
    result = optimize("export", model, "--train-device", "tpu", "--output", str(tmp_path / "o"))
    assert_one_line_error(result, "unknown --train-device 'tpu'", code=2)
    assert not (tmp_path / "o").exists()


def _modules_on_cpu(*modules) -> bool:
    return all(p.device.type == "cpu" for m in modules for p in m.parameters())


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
    assert _modules_on_cpu(outcome.loaded.module, loaded.module)


@needs_cuda
def test_qat_trains_on_the_gpu_into_an_int8_bundle_within_parity(tiny_model_dir, quick_job, tmp_path):
    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "o", target="ort-int8")
    job = dataclasses.replace(job, quant=QuantConfig(qat_steps=20), training=TrainingConfig(device="cuda"))
    outcome = export_model(job)
    qat = outcome.manifest["qat"]
    assert qat["device"].startswith("cuda (") and qat["steps"] == 20, qat
    assert outcome.parity.ok, outcome.parity.summary()
