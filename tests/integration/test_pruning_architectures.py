"""Pruning reads each family's layout from its architecture description (optimize/architectures.py):
every tested family is cut physically and exactly: ALBERT's shared layer once for all its uses,
MPNet's shared relative position bias follows each layer's heads, ModernBERT's fused QKV and gated
FFN lose whole heads and neurons, DeBERTa's relative position attention follows its Q and K.
An architecture outside the tested list gets one line saying pruning is not available and which
families have it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny_models
from optimize.architectures import prunable_names
from optimize.config import CalibrationConfig, PruneConfig
from optimize.errors import InputError
from optimize.exporter import resolve
from optimize.pruning.structure import encoder_layers, encoder_params, keep_heads, keep_layers, keep_neurons

PRUNABLE = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "mpnet", "deberta-v2", "modernbert")


def _layers(loaded):
    return encoder_layers(loaded.module, loaded.hidden_size // loaded.num_heads)


def _ids(loaded, length: int = 9) -> dict:
    encoded = loaded.tokenizer(["Pruning cuts heads and neurons.", "Short."], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return {name: encoded[name] for name in loaded.input_names}


def test_every_tested_family_is_prunable():
    assert set(prunable_names()) == set(PRUNABLE)


@pytest.mark.parametrize("kind", PRUNABLE)
def test_a_head_and_neurons_that_write_nothing_go_without_any_effect(kind, tiny_model_dir):
    """Physical removal is exact on every prunable family: a head whose output-projection
    columns are zero and neurons whose output weights are zero can be cut without changing a
    value. For MPNet this also proves the shared position bias is cut to the right heads (the
    middle head goes, so keeping the first ones would misalign every head after it), for
    ModernBERT that Q, K and V are cut in each third of the fused matrix and a gated neuron's
    value and gate go together, and for DeBERTa that the relative position terms follow."""
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
    assert layers[0].heads == 3 and layers[0].qkv[0].out_features == (3 if layers[0].fused_qkv else 1) * 3 * size
    assert encoder_params(layers) < before
    with torch.inference_mode():
        got = module(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_deberta_without_shared_keys_cuts_its_position_projections_with_the_heads():
    """DeBERTa-v2 without share_att_key projects the relative embeddings with linears of its own,
    one block per head: they are cut with the heads (a kept head reading another head's position
    projection would change every value)."""
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
        share_att_key=False, position_biased_input=False, type_vocab_size=0, initializer_range=0.2,
    )
    module = DebertaV2Model(config).eval()
    layers = encoder_layers(module, 16)
    assert layers[0].head_projections == ("pos_key_proj", "pos_query_proj")
    assert layers[0].fit_qk  # Q and K see only the content here, so the fit may re-fit them
    with torch.no_grad():
        layers[0].output.weight[:, 16:32] = 0.0
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        want = module(input_ids=ids, attention_mask=mask).last_hidden_state.clone()
    keep_heads(module, layers[0], [0, 2, 3])
    assert layers[0].attention.pos_key_proj.out_features == layers[0].attention.pos_query_proj.out_features == 48
    with torch.inference_mode():
        got = module(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "keep"), [("bert", [1]), ("deberta-v2", [1]), ("modernbert", [0, 2])])
def test_dropping_layers_equals_skipping_them(kind, keep, tiny_model_dir):
    """--drop-layers finds the layers where the family's description says they are (ModernBERT's
    are not under an encoder), and per-layer settings follow: ModernBERT's local and global
    attention, kept in the config the bundle ships."""
    loaded = resolve(str(tiny_model_dir(kind)))
    module, layers = loaded.module, _layers(loaded)
    skipped = [layers[i].block for i in range(len(layers)) if i not in keep]
    hooks = [b.register_forward_hook(lambda _m, args, out: (args[0], *out[1:]) if isinstance(out, tuple) else args[0]) for b in skipped]
    inputs = _ids(loaded, 24)
    with torch.inference_mode():
        want = module(**inputs).last_hidden_state.clone()
    for hook in hooks:
        hook.remove()
    types = list(getattr(module.config, "layer_types", None) or [])
    keep_layers(module, keep)
    assert [layer.block for layer in _layers(loaded)] == [layers[i].block for i in keep]
    assert module.config.num_hidden_layers == len(keep)
    if types:
        assert module.config.layer_types == [types[i] for i in keep]
    with torch.inference_mode():
        got = module(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_deberta_v3_refits_v_alone_and_a_deberta_with_a_convolution_is_refused(tiny_model_dir):
    """DeBERTa-v3 shares Q and K with its relative position embeddings, which the content-only
    fit does not see: V alone is re-fitted. DeBERTa-v2-xlarge's convolution after the first
    layer runs outside the layers that the fit runs one by one: refused in one line."""
    from transformers import DebertaV2Config, DebertaV2Model

    layers = _layers(resolve(str(tiny_model_dir("deberta-v2"))))
    assert not layers[0].fit_qk and layers[0].fitted_qkv()[1] == 2
    config = DebertaV2Config(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, relative_attention=True, conv_kernel_size=3, conv_act="gelu",
    )
    with pytest.raises(InputError) as refused:
        encoder_layers(DebertaV2Model(config).eval(), 16)
    assert "pruning is not available for this deberta-v2 model: its convolution after the first layer" in refused.value.one_line()


def test_albert_shared_layer_is_one_layer_pruned_for_all_its_uses(tiny_model_dir):
    loaded = resolve(str(tiny_model_dir("albert")))
    assert loaded.num_layers == 2 and len(_layers(loaded)) == 1  # one set of weights, used twice


def test_pruning_an_untested_architecture_is_refused_in_one_line_naming_the_families_that_have_it(tmp_path):
    folder = tmp_path / "ernie"
    tiny_models.build(tiny_models.GENERIC, folder)
    with pytest.raises(InputError) as refused:
        _layers(resolve(str(folder)))
    line = refused.value.one_line()
    assert "pruning is not available for architecture 'ernie': it is not in the tested list" in line
    assert all(name in line for name in PRUNABLE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mpnet", "albert", "deberta-v2", "modernbert"])
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
