"""Structured pruning on tiny random models: physical removal, reconstruction, recovery, manifest."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from tiny_models import TINY_FIT

from optimize.api import export_model, parity_batches
from optimize.config import CalibrationConfig, ExportJob, ParityConfig, PruneConfig
from optimize.exporter import resolve
from optimize.pruning import prune
from optimize.pruning.structure import encoder_layers, encoder_params, keep_heads, keep_neurons


def _loaded(tiny_model_dir, kind="bert"):
    return resolve(str(tiny_model_dir(kind)))


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_cutting_heads_and_neurons_shrinks_the_matrices_and_still_runs(kind, tiny_model_dir):
    loaded = _loaded(tiny_model_dir, kind)
    module = loaded.module
    layers = encoder_layers(module, loaded.hidden_size // loaded.num_heads)
    before = encoder_params(layers)
    keep_heads(module, layers[0], [0, 2])
    keep_neurons(module, layers[1], list(range(0, layers[1].neurons, 2)))
    assert layers[0].qkv[0].out_features == 2 * layers[0].head_size
    assert layers[0].output.in_features == 2 * layers[0].head_size
    assert layers[1].ffn_out.in_features == layers[1].neurons
    assert encoder_params(layers) < before
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    with torch.inference_mode():
        out = module(input_ids=ids, attention_mask=torch.ones_like(ids))[loaded.output_name]
    assert torch.isfinite(out).all()


def test_cutting_a_head_whose_output_weights_are_zero_changes_nothing(tiny_model_dir):
    """Physical removal is exact: a head that writes nothing can go without any effect."""
    loaded = _loaded(tiny_model_dir)
    module = loaded.module
    layers = encoder_layers(module, loaded.hidden_size // loaded.num_heads)
    size = layers[0].head_size
    with torch.no_grad():
        layers[0].output.weight[:, size : 2 * size] = 0.0
    ids = torch.tensor([[2, 5, 9, 11, 3, 7]])
    with torch.inference_mode():
        want = module(input_ids=ids)[loaded.output_name].clone()
    keep_heads(module, layers[0], [h for h in range(layers[0].heads) if h != 1])
    with torch.inference_mode():
        got = module(input_ids=ids)[loaded.output_name]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # minutes on a busy 2-core machine: the full suite only (keeps -m 'not slow' under 5 minutes)
def test_prune_meets_the_budget_and_reconstruction_helps(tiny_model_dir, quick_job, tmp_path):
    loaded = _loaded(tiny_model_dir)
    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "o")
    batches = {p.texts.key: p.batches for p in parity_batches(loaded, job)}
    calibration = CalibrationConfig(size=64, seq_len=64)
    plain = prune(loaded, PruneConfig(fraction=0.3, reconstruct=False, fit_texts=TINY_FIT), calibration, batches).report
    fitted = prune(loaded, PruneConfig(fraction=0.3, fit_texts=TINY_FIT), calibration, batches).report
    assert fitted["encoder_params_kept_share"] <= 0.71
    assert fitted["macs_per_token_after"] < fitted["macs_per_token_before"]
    assert plain["heads_kept"] == fitted["heads_kept"] and plain["neurons_kept"] == fitted["neurons_kept"]
    assert all(h >= 1 for h in fitted["heads_kept"])
    after_cut = fitted["pytorch_similarity"]["after_cut"]["cosine_mean"]
    after_fit = fitted["pytorch_similarity"]["after_reconstruction"]["cosine_mean"]
    assert after_fit > after_cut
    # the reference module is untouched
    assert encoder_params(encoder_layers(loaded.module, loaded.hidden_size // loaded.num_heads)) == fitted["encoder_params_before"]


@pytest.mark.parametrize("kind", ["bert", "distilbert", "deberta-v2", "modernbert"])
def test_layer_by_layer_forward_of_the_reconstruction_equals_the_model(kind, tiny_model_dir, quick_job, tmp_path):
    """The fit runs each layer alone from cached inputs; chained, they must give the model's
    output. Each layer gets its own arguments: ModernBERT's local layers a sliding-window mask
    and their own rotary table (its tiny model's window, 16, is shorter than these texts)."""
    from optimize.pruning.reconstruct import _advance, _layer_calls

    loaded = _loaded(tiny_model_dir, kind)
    batches = parity_batches(loaded, quick_job(str(tiny_model_dir(kind)), tmp_path / "o"))[0].batches[:2]
    assert max(int(b["attention_mask"].sum(1).max()) for b in batches) > 16
    layers = encoder_layers(loaded.module, loaded.hidden_size // loaded.num_heads)
    own = _layer_calls(loaded.module, [layer.block for layer in layers], batches)
    calls = own[0]
    for index, layer in enumerate(layers):
        calls = _advance(layer.block, calls, own[index + 1] if index + 1 < len(layers) else calls)
    outputs = []  # the last layer's output in the model (ModernBERT's last_hidden_state is normed after it)
    handle = layers[-1].block.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.inference_mode():
            for call, feeds in zip(calls, batches):
                loaded.module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
                want = outputs[-1]
                real = call.real.reshape(want.shape[:2])
                torch.testing.assert_close(call.args[0][real], want[real])
    finally:
        handle.remove()


def test_heads_give_up_less_of_their_parameters_than_the_ffn(tiny_model_dir):
    from optimize.pruning.importance import HEAD_SHARE, Scores, select
    from optimize.pruning.structure import head_cost, linear_params

    loaded = _loaded(tiny_model_dir)
    layers = encoder_layers(loaded.module, loaded.hidden_size // loaded.num_heads)
    rng = np.random.default_rng(0)
    scores = Scores([rng.random(layer.heads) for layer in layers], [rng.random(layer.neurons) for layer in layers])
    selection = select(scores, layers, 0.3)
    head_params = sum(linear_params(lin) for layer in layers for lin in (*layer.qkv, layer.output))
    heads_cut = sum(layer.heads - len(kept) for layer, kept in zip(layers, selection.heads))
    head_share = heads_cut * head_cost(layers[0]) / head_params
    assert head_share == pytest.approx(HEAD_SHARE * 0.3, abs=head_cost(layers[0]) / head_params)
    assert selection.removed_params >= 0.3 * encoder_params(layers)


@pytest.mark.slow
def test_recovery_distils_towards_the_unpruned_model(tiny_model_dir, quick_job, tmp_path):
    loaded = _loaded(tiny_model_dir)
    batches = {p.texts.key: p.batches for p in parity_batches(loaded, quick_job(str(tiny_model_dir("bert")), tmp_path / "o"))}
    # without the least-squares fit, so that recovery has the whole gap to close (on a tiny random
    # model the fit alone leaves a loss of 1e-5, which recovery can only jitter around)
    config = PruneConfig(fraction=0.4, reconstruct=False, recover_steps=30)
    report = prune(loaded, config, CalibrationConfig(size=64, seq_len=64), batches).report
    assert report["recovery"]["loss_last"] < report["recovery"]["loss_first"] / 2
    assert report["recovery"]["device"] == "cpu"  # prune() trains where it is told, the CPU unless told otherwise
    similarity = report["pytorch_similarity"]
    assert similarity["after_recovery"]["cosine_mean"] > similarity["after_reconstruction"]["cosine_mean"]


@pytest.mark.parametrize("target", [pytest.param(t, marks=pytest.mark.slow) for t in ("ort-fp32", "ort-int8")])
def test_pruned_export_has_smaller_matrices_and_a_manifest(target, tiny_model_dir, quick_job, tmp_path):
    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "out", target=target)
    job = dataclasses.replace(job, prune=PruneConfig(fraction=0.3, fit_texts=TINY_FIT), calibration=CalibrationConfig(size=48, seq_len=64))
    outcome = export_model(job)
    pruning = outcome.manifest["pruning"]
    assert pruning["encoder_params_after"] <= 0.71 * pruning["encoder_params_before"]
    # the pruning budget's figures (--prune-min-cosine 0.95, the worst text 0.2 below, agreement 0.8)
    parity = outcome.parity
    assert parity.cosine_mean >= 0.95 and parity.cosine_min >= 0.75 and parity.neighbour_agreement >= 0.8, parity.summary()
    # and the artifact computes what the pruned PyTorch model computes: parity against the unpruned
    # model cannot be much better than the pruned model's own cosine
    after = pruning["pytorch_similarity"]["after_reconstruction"]["cosine_mean"]
    assert parity.cosine_mean == pytest.approx(after, abs=0.01 if target == "ort-fp32" else 0.02), (parity.summary(), after)
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    dims = {int(d) for t in model.graph.initializer if len(t.dims) == 2 for d in t.dims}
    unpruned = {2, 64, 128, 192, 30522}  # token types, hidden, FFN/positions, packed QKV, vocabulary
    assert dims - unpruned, "no matrix got narrower"
    if target == "ort-fp32":
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("If") == 2  # fusion (then packing: each layer's attention per sequence) still happens with per-layer head counts


def test_unpruned_export_records_no_pruning(tiny_model_dir, quick_job, tmp_path):
    outcome = export_model(quick_job(str(tiny_model_dir("bert")), tmp_path / "out"))
    assert outcome.manifest["pruning"] is None


def test_prune_config_takes_fractions_in_zero_one_only():
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError):
            PruneConfig(fraction=bad)
    for good in (0.0, 0.5, 0.99):
        assert PruneConfig(fraction=good).fraction == good
    assert not PruneConfig(fraction=0.0).enabled and PruneConfig(fraction=0.5).enabled


@pytest.mark.slow
def test_a_cut_beyond_the_budget_is_refused_with_what_helps_pruning(tiny_model_dir, quick_job, tmp_path):
    from optimize.errors import ParityError

    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "out")
    job = dataclasses.replace(job, prune=PruneConfig(fraction=0.4, reconstruct=False, min_cosine=0.99999, fit_texts=TINY_FIT), calibration=CalibrationConfig(size=48, seq_len=64))
    with pytest.raises(ParityError) as refused:
        export_model(job)
    assert "--recover" in refused.value.fix and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_layer_pruned_to_one_head_still_builds(tiny_model_dir, quick_job, tmp_path):
    """onnxscript's MHA rules do not take a one-head layer; its SDPA must not reach ORT unlowered."""
    job = quick_job(str(tiny_model_dir("bert")), tmp_path / "out")
    prune_cfg = PruneConfig(fraction=0.3, what="heads", reconstruct=False, min_cosine=0.0, min_agreement=0.0, fit_texts=TINY_FIT)
    outcome = export_model(dataclasses.replace(job, prune=prune_cfg, calibration=CalibrationConfig(size=48, seq_len=64)))
    assert 1 in outcome.manifest["pruning"]["heads_kept"]
    ops = outcome.manifest["passes"]["final_ops"]
    assert not any(op.startswith("ai.onnxruntime._fusion") for op in ops)
    inner = outcome.manifest["passes"].get("final_ops_in_subgraphs", {})
    # the one-head layer as an MHA of its own (padded), the other fused and packed: two MHA in its If's branches
    attentions = ops.get("com.microsoft::Attention", 0) + ops.get("com.microsoft::MultiHeadAttention", 0)
    assert attentions + inner.get("com.microsoft::MultiHeadAttention", 0) // 2 == 2, (ops, inner)


@pytest.mark.slow  # minutes on a busy 2-core machine: the full suite only (keeps -m 'not slow' under 5 minutes)
def test_drop_layers_removes_the_least_missed_layer_and_recovery_maps_the_rest(tmp_path):
    import tiny_models

    # three layers with weights large enough that each one matters
    folder = tiny_models.build("bert", tmp_path / "model", layers=3, init_std=0.2)
    loaded = resolve(str(folder))
    batches = parity_batches(loaded, ExportJob(model=str(folder), target="ort-fp32", output=tmp_path / "o",
                                               parity=ParityConfig(size=24, seq_len=64, unseen_size=24)))
    sets = {p.texts.key: p.batches for p in batches}
    report = prune(loaded, PruneConfig(drop_layers=1, recover_steps=20, fit_texts=TINY_FIT), CalibrationConfig(size=64, seq_len=64), sets).report
    assert report["layers_total"] == 3 and len(report["layers_kept"]) == 2
    assert report["encoder_params_kept_share"] == pytest.approx(2 / 3, abs=0.01)
    similarity = report["pytorch_similarity"]
    assert similarity["after_recovery"]["cosine_mean"] > similarity["after_cut"]["cosine_mean"]
