"""Pruning reads each family's layout from its architecture description (optimize/architectures.py):
every standard-layout family is cut physically and exactly, ALBERT's shared layer once for all its
uses, MPNet's shared relative position bias follows each layer's heads; elsewhere one line says
pruning is not available and which families have it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optimize.architectures import prunable_names
from optimize.config import CalibrationConfig, PruneConfig
from optimize.errors import InputError
from optimize.exporter import resolve
from optimize.pruning.structure import encoder_layers, encoder_params, keep_heads, keep_neurons

PRUNABLE = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "mpnet")


def _layers(loaded):
    return encoder_layers(loaded.module, loaded.hidden_size // loaded.num_heads)


def _ids(loaded, length: int = 9) -> dict:
    encoded = loaded.tokenizer(["Pruning cuts heads and neurons.", "Short."], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return {name: encoded[name] for name in loaded.input_names}


def test_the_named_standard_layouts_are_the_prunable_ones():
    assert set(prunable_names()) == set(PRUNABLE)


@pytest.mark.parametrize("kind", PRUNABLE)
def test_a_head_and_neurons_that_write_nothing_go_without_any_effect(kind, tiny_model_dir):
    """Physical removal is exact on every prunable family: a head whose output-projection
    columns are zero and neurons whose output weights are zero can be cut without changing a
    value. For MPNet this also proves the shared position bias is cut to the right heads (the
    middle head goes, so keeping the first ones would misalign every head after it)."""
    loaded = resolve(str(tiny_model_dir(kind)))
    module, layers = loaded.module, _layers(loaded)
    size = layers[0].head_size
    with torch.no_grad():
        layers[0].output.weight[:, size : 2 * size] = 0.0
        layers[-1].ffn_out.weight[:, :8] = 0.0
    inputs = _ids(loaded)
    with torch.inference_mode():
        want = module(**inputs).last_hidden_state.clone()
    before = encoder_params(layers)
    keep_heads(module, layers[0], [h for h in range(layers[0].heads) if h != 1])
    keep_neurons(module, layers[-1], list(range(8, layers[-1].neurons)))
    assert layers[0].qkv[0].out_features == (layers[0].heads) * size == 3 * size
    assert encoder_params(layers) < before
    with torch.inference_mode():
        got = module(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_albert_shared_layer_is_one_layer_pruned_for_all_its_uses(tiny_model_dir):
    loaded = resolve(str(tiny_model_dir("albert")))
    assert loaded.num_layers == 2 and len(_layers(loaded)) == 1  # one set of weights, used twice


@pytest.mark.parametrize("kind", ["modernbert", "deberta-v2"])
def test_pruning_elsewhere_is_refused_in_one_line_naming_the_families_that_have_it(kind, tiny_model_dir):
    loaded = resolve(str(tiny_model_dir(kind)))
    with pytest.raises(InputError) as refused:
        _layers(loaded)
    line = refused.value.one_line()
    assert f"pruning is not available for architecture '{kind}'" in line
    assert all(name in line for name in PRUNABLE)


@pytest.mark.parametrize("kind", ["mpnet", "albert"])
def test_pruned_export_of_the_unusual_layouts(kind, tiny_model_dir, quick_job, tmp_path):
    from optimize.api import export_model

    from optimize.calibration.corpus import calibration_texts

    # a short calibration file: the fit takes every calibration text there is (4,096 built in)
    texts = tmp_path / "calibration.txt"
    texts.write_text("\n".join(calibration_texts(None, 96)), encoding="utf-8")
    job = quick_job(str(tiny_model_dir(kind)), tmp_path / "out")
    job = dataclasses.replace(job, prune=PruneConfig(fraction=0.3), calibration=CalibrationConfig(path=texts, size=96, seq_len=64))
    outcome = export_model(job)
    pruning = outcome.manifest["pruning"]
    assert pruning["encoder_params_after"] <= 0.71 * pruning["encoder_params_before"]
    assert outcome.parity.ok
