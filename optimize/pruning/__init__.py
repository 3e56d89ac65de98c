"""Structured pruning before export: score, cut, reconstruct, optionally recover.

    scores = importance.measure(...)      heads and FFN neurons, on calibration text
    selection = importance.select(...)    global ranking per kind, to the budget
    structure.keep_heads/keep_neurons     physical removal: smaller nn.Linear modules
    reconstruct.reconstruct(...)          least-squares re-fit of the output projections
    recover.distil(...)                   --recover STEPS: distillation against the unpruned model

The pruned module is then exported like any other, so the ONNX graph carries the smaller
matrices and every target (int8, fp16, TensorRT) composes with pruning unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from optimize.calibration.batches import length_bucketed_batches
from optimize.calibration.corpus import RECOVERY_TEXTS_MAX, calibration_texts
from optimize.config import CalibrationConfig, PruneConfig
from optimize.errors import InputError
from optimize.exporter.resolve import LoadedModel
from optimize.parity import similarity_scores
from optimize.pruning import importance, reconstruct, recover, structure
from optimize.runtimes.base import Feeds

#: calibration batches (of 16) on which each layer's removal is measured for --drop-layers
LAYER_SCORING_BATCHES = 16
#: recovery draws from every calibration text up to this many (the built-in corpus has about
#: 14,000): on 512 texts cycled the student over-fits them (held-out cosine 0.948 against 0.962)
RECOVERY_TEXTS = RECOVERY_TEXTS_MAX


@dataclasses.dataclass
class PruneOutcome:
    loaded: LoadedModel
    report: dict[str, Any]


def _outputs(loaded: LoadedModel, module: Any, batches: list[Feeds]) -> list[dict[str, np.ndarray]]:
    import torch

    device = next(module.parameters()).device  # wherever the module is (recovery may run on a GPU)
    outputs = []
    with torch.inference_mode():
        for feeds in batches:
            tensors = {k: torch.from_numpy(v).long().to(device) for k, v in feeds.items()}
            result = module(**tensors, return_dict=True)
            outputs.append({name: result[name].float().cpu().numpy() for name in loaded.outputs})
    return outputs


def _similarity(
    loaded: LoadedModel, references: dict[str, list[np.ndarray]], module: Any, parity_sets: dict[str, list[Feeds]]
) -> dict[str, float | None]:
    """PyTorch-side similarity to the unpruned model on each parity set; the first set's
    figures at the top level (as the export's parity line reads them), the others by name."""
    figures: dict[str, Any] = {}
    for index, (key, batches) in enumerate(parity_sets.items()):
        mean, minimum, agreement = similarity_scores(
            references[key], _outputs(loaded, module, batches), [b["attention_mask"] for b in batches], loaded.task
        )
        row = {"cosine_mean": round(mean, 6), "cosine_min": round(minimum, 6), "agreement": None if agreement is None else round(agreement, 4)}
        if index == 0:
            figures.update(row)
        else:
            figures[key] = row
    return figures


def prune(
    loaded: LoadedModel,
    cfg: PruneConfig,
    calibration: CalibrationConfig,
    parity_sets: dict[str, list[Feeds]],
    progress: Callable[[str], None] = lambda line: None,
    device: str = "cpu",
) -> PruneOutcome:
    """A pruned copy of ``loaded``; the original module is left untouched (it stays the reference).
    ``device``: where ``--recover`` trains (the scores and fits run on the CPU).

    ``parity_sets`` (held-out text first, then the unseen domain) are only measured on, for the
    report: nothing is chosen or fitted on them."""
    started = time.perf_counter()
    head_size = loaded.hidden_size // loaded.num_heads
    teacher = loaded.module
    student = copy.deepcopy(teacher).eval()
    teacher_layers = structure.encoder_layers(teacher, head_size)
    layers = structure.encoder_layers(student, head_size)
    total = structure.encoder_params(layers)
    seq_len = min(calibration.seq_len, loaded.max_sequence)
    macs_before = structure.macs_per_token(layers, seq_len)

    texts = calibration_texts(calibration.path, max(cfg.fit_texts, calibration.size), calibration.text_column)
    # batches of similar length: the corpus mixes sentences with paragraphs, and a batch padded
    # to its longest member spent three quarters of the scoring and fitting on padding
    fit_batches = list(
        length_bucketed_batches(loaded.tokenizer, texts[: cfg.fit_texts], loaded.input_names, batch_size=16, seq_len=seq_len, seed=0)
    )

    classifier = loaded.task == "text-classification"
    kept_layers = list(range(len(layers)))
    if cfg.drop_layers:
        if cfg.drop_layers >= len(layers):
            raise InputError(
                f"--drop-layers {cfg.drop_layers} would leave no layer of {len(layers)}", f"drop at most {len(layers) - 1}"
            )
        progress("pruning: measuring which layers the model misses least")
        dropped = importance.layers_to_drop(student, layers, fit_batches[:LAYER_SCORING_BATCHES], cfg.drop_layers, classifier)
        kept_layers = [i for i in range(len(layers)) if i not in dropped]
        structure.keep_layers(student, kept_layers)
        layers = structure.encoder_layers(student, head_size)

    progress("pruning: scoring heads and FFN neurons")
    scores = importance.measure(student, layers, fit_batches)
    selection = importance.select(scores, layers, cfg.fraction, cfg.what)
    for layer, heads, neurons in zip(layers, selection.heads, selection.neurons):
        if len(heads) < layer.heads:
            structure.keep_heads(student, layer, heads)
        if len(neurons) < layer.neurons:
            structure.keep_neurons(student, layer, neurons)
    reference = {key: _outputs(loaded, teacher, batches) for key, batches in parity_sets.items()}
    after_cut = _similarity(loaded, reference, student, parity_sets)

    fits: list[dict[str, float]] = []
    if cfg.reconstruct:
        progress("pruning: least-squares reconstruction of the output projections")
        fits = reconstruct.reconstruct(student, layers, teacher, teacher_layers, fit_batches, selection.heads, selection.neurons, kept_layers)
    after_fit = _similarity(loaded, reference, student, parity_sets)

    recovery = None
    after_recovery = None
    training_texts: list[str] = []
    if cfg.recover_steps > 0:
        training_texts = calibration_texts(calibration.path, RECOVERY_TEXTS, calibration.text_column)

        def batches(epoch: int):  # every text once per epoch, reshuffled each time
            return length_bucketed_batches(
                loaded.tokenizer, training_texts, loaded.input_names, batch_size=16, seq_len=seq_len, seed=epoch
            )

        recovery = recover.distil(
            student, teacher, batches, cfg.recover_steps, classifier=classifier, layer_map=kept_layers, device=device,
            progress=lambda step, loss: progress(f"pruning: recovery step {step}/{cfg.recover_steps} (loss {loss:.4f})"),
        )
        after_recovery = _similarity(loaded, reference, student, parity_sets)

    kept = structure.encoder_params(layers)
    report = {
        "fraction_requested": cfg.fraction,
        "counted": "weights and biases of Q, K, V, attention output and both FFN linears of every layer (embeddings, norms, pooler, head excluded)",
        "encoder_params_before": total,
        "encoder_params_after": kept,
        "encoder_params_kept_share": round(kept / total, 4),
        "macs_per_token_before": macs_before,
        "macs_per_token_after": structure.macs_per_token(layers, seq_len),
        "macs_at_sequence": seq_len,
        "layers_kept": kept_layers,
        "layers_total": len(teacher_layers),
        "heads_kept": [len(h) for h in selection.heads],
        "heads_total": [t.heads for t in teacher_layers],
        "neurons_kept": [len(n) for n in selection.neurons],
        "neurons_total": [t.neurons for t in teacher_layers],
        "kept_head_indices": selection.heads,
        "scored_on_texts": len(texts[: cfg.fit_texts]),
        "recovery_texts": len(training_texts),
        "reconstruction_relative_residual": fits,
        "pytorch_similarity": {"after_cut": after_cut, "after_reconstruction": after_fit, "after_recovery": after_recovery},
        "recovery": recovery,
        "seconds": round(time.perf_counter() - started, 1),
    }
    dropped_note = f", {len(teacher_layers) - len(kept_layers)} of {len(teacher_layers)} layers dropped" if cfg.drop_layers else ""
    description = f"{loaded.description}, pruned to {kept / total:.0%} of its encoder parameters{dropped_note}"
    # num_layers follows --drop-layers: the fusion pass expects one fused attention per layer left
    pruned = dataclasses.replace(loaded, module=student, description=description, num_layers=len(kept_layers))
    return PruneOutcome(pruned, report)
