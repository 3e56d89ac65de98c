"""Retraining-free reconstruction: re-fit each pruned layer's output projections by least squares.

After heads and neurons are cut, each layer's attention output projection and second FFN
linear (weights and bias) are re-fitted, layer by layer from the first, so that what enters
the following LayerNorm in the pruned model matches what enters it in the unpruned model:

    minimise  || [X_kept, 1] W  -  (S_teacher - R_student) ||^2  + ridge

where X_kept are the pruned model's inputs to the projection, S the sum entering the
LayerNorm (projection output + residual) and R_student = S_student - projection output the
pruned model's own residual. Fitting to the teacher's sum, not to the teacher's projection
output, also absorbs the drift that earlier layers left in the residual (Kwon et al. 2022 tune
the kept rows' scales by least squares; this fits the whole matrix, which has more freedom).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from optimize.pruning.structure import LayerParts
from optimize.runtimes.base import Feeds

#: ridge strength relative to the mean diagonal of the Gram matrix: keeps near-collinear
#: activations (GELU tails, low-rank heads) from blowing the fit up. Measured at 30%: 1e-3 0.9299,
#: 1e-2 0.9328, 1e-1 lower again. (Weighting tokens by 1 / their LayerNorm variance, so each
#: token's relative error counts as LayerNorm will see it, gave 0.9303: left out.)
RIDGE = 1e-2


class _Stop(Exception):
    """Raised by a hook once what is needed has been seen: the rest of the forward is skipped."""


@dataclass(frozen=True)
class _BlockCall:
    """One batch's call of an encoder layer: its arguments, and which tokens are real."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    real: Any  # torch.bool [batch * seq]


def _first_block_calls(module: Any, block: Any, batches: list[Feeds]) -> list[_BlockCall]:
    """Run the embeddings of ``module`` on every batch; keep the arguments its first layer gets."""
    import torch

    seen: dict[str, Any] = {}

    def hook(_m: Any, args: tuple, kwargs: dict) -> None:
        seen.update(args=args, kwargs=kwargs)
        raise _Stop()

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    calls = []
    try:
        with torch.inference_mode():
            for feeds in batches:
                tensors = {k: torch.from_numpy(v).long() for k, v in feeds.items()}
                try:
                    module(**tensors)
                except _Stop:
                    pass
                calls.append(_BlockCall(seen["args"], seen["kwargs"], tensors["attention_mask"].reshape(-1).bool()))
    finally:
        handle.remove()
    return calls


def _advance(block: Any, calls: list[_BlockCall]) -> list[_BlockCall]:
    """The calls of the next layer: this layer's output in place of its hidden-state input."""
    import torch

    advanced = []
    with torch.inference_mode():
        for call in calls:
            out = block(*call.args, **call.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
            advanced.append(_BlockCall((hidden, *call.args[1:]), call.kwargs, call.real))
    return advanced


def _real(tensor: Any, real: Any, exact: bool = True) -> Any:
    """The real tokens' rows (a torch tensor); float64 for the sums of the fit, or kept float32
    (the model's own values, widened exactly later) for what is stored across a whole layer."""
    rows = tensor.reshape(-1, tensor.shape[-1])[real]
    return rows.double() if exact else rows.float()


def _capture(block: Any, projection: Any, norm: Any, calls: list[_BlockCall]) -> Iterator[tuple[Any, ...]]:
    """Per batch (projection input, projection output, norm input), real tokens only; the layer
    runs only as far as ``norm``. Yielded batch by batch: the FFN's input is 4x the hidden
    width, and keeping every batch of it in float64 would take GBs for BERT-base and larger."""
    import torch

    seen: dict[str, Any] = {}
    handles = [
        projection.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], z=out)),
        norm.register_forward_pre_hook(lambda _m, args: (seen.update(s=args[0]), (_ for _ in ()).throw(_Stop()))),
    ]
    try:
        for call in calls:
            # not around the yield: inference mode is thread state and would leak to the consumer
            with torch.inference_mode():
                try:
                    block(*call.args, **call.kwargs)
                except _Stop:
                    pass
            yield _real(seen["x"], call.real), _real(seen["z"], call.real), _real(seen["s"], call.real)
    finally:
        for handle in handles:
            handle.remove()


def _norm_inputs(block: Any, norms: tuple[Any, Any], calls: list[_BlockCall]) -> tuple[list[Any], list[Any]]:
    """What enters each of the layer's two norms, per batch, real tokens only (one layer call)."""
    import torch

    captured: tuple[list[Any], list[Any]] = ([], [])
    real: dict[str, Any] = {}
    handles = [
        norm.register_forward_pre_hook(lambda _m, args, i=i: captured[i].append(_real(args[0], real["mask"], exact=False)))
        for i, norm in enumerate(norms)
    ]
    try:
        with torch.inference_mode():
            for call in calls:
                real["mask"] = call.real
                block(*call.args, **call.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _refit(linear: Any, student: Iterator[tuple[Any, ...]], teacher: list[Any]) -> float:
    """Solve the ridge least squares for ``linear`` in place; returns the relative residual.

    The student's activations arrive batch by batch and only their Gram and cross sums are
    kept; every batch's must be consumed before ``linear`` changes (it is read by the capture).
    The sums are torch's, not numpy's: interleaved with the layer's forward, two BLAS thread
    pools on two cores took turns spinning (user time 392 s -> 559 s for the embedded BERT).
    """
    import torch

    width = linear.in_features + 1
    gram_sum = torch.zeros((width, width), dtype=torch.float64)
    cross_sum = torch.zeros((width, linear.out_features), dtype=torch.float64)
    target_energy = 0.0
    with torch.inference_mode():
        for (x, z, s), s_teacher in zip(student, teacher, strict=True):
            target = s_teacher.double() - (s - z)
            design = torch.cat([x, torch.ones((x.shape[0], 1), dtype=torch.float64)], dim=1)
            gram_sum += design.T @ design
            cross_sum += design.T @ target
            target_energy += float((target**2).sum())
    gram, cross = gram_sum.numpy(), cross_sum.numpy()
    ridge = RIDGE * float(np.mean(np.diag(gram)))
    solution = np.linalg.solve(gram + ridge * np.eye(width), cross)
    # ||D W - T||^2 from the sums already made, instead of a second pass over the activations
    residual_energy = float(np.sum(solution * (gram @ solution)) - 2 * np.sum(solution * cross) + target_energy)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(solution[:-1].T.copy()).to(linear.weight.dtype))
        linear.bias.copy_(torch.from_numpy(solution[-1].copy()).to(linear.bias.dtype))
    return residual_energy / max(target_energy, 1e-30)


def reconstruct(student: Any, student_layers: list[LayerParts], teacher: Any, teacher_layers: list[LayerParts], batches: list[Feeds]) -> list[dict[str, float]]:
    """Re-fit every pruned layer's two output projections, first layer first.

    Both models advance one layer at a time from cached layer inputs, so each layer runs about
    three times in all instead of the model running from the embeddings for every fit (1536
    texts: 424 s before, 105 s after), so the fit can afford every calibration text (at 30%,
    held-out cosine 0.945 on 256 texts, 0.973 on 3,151: fewer texts are over-fitted).
    """
    student_calls = _first_block_calls(student, student_layers[0].block, batches)
    teacher_calls = _first_block_calls(teacher, teacher_layers[0].block, batches)
    fits = []
    for s_layer, t_layer in zip(student_layers, teacher_layers):
        targets = _norm_inputs(t_layer.block, (t_layer.attention_norm, t_layer.ffn_norm), teacher_calls)
        row = {}
        for kind, projection, norm, target in (
            ("attention", s_layer.output, s_layer.attention_norm, targets[0]),
            ("ffn", s_layer.ffn_out, s_layer.ffn_norm, targets[1]),
        ):
            row[kind] = round(_refit(projection, _capture(s_layer.block, projection, norm, student_calls), target), 5)
        fits.append(row)
        student_calls = _advance(s_layer.block, student_calls)
        teacher_calls = _advance(t_layer.block, teacher_calls)
    return fits
