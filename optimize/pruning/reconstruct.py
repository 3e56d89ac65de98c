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
    """Raised by a hook once the layer being fitted has been seen: the rest of the model is skipped."""


def _capture(module: Any, projection: Any, norm: Any, batches: list[Feeds], want_input: bool) -> list[tuple[np.ndarray, ...]]:
    """Per batch (projection input or None, projection output, norm input), real tokens only."""
    import torch

    seen: dict[str, Any] = {}
    handles = [
        projection.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], z=out)),
        norm.register_forward_pre_hook(lambda _m, args: (seen.update(s=args[0]), (_ for _ in ()).throw(_Stop()))),
    ]
    captured = []
    try:
        with torch.inference_mode():
            for feeds in batches:
                tensors = {k: torch.from_numpy(v).long() for k, v in feeds.items()}
                real = tensors["attention_mask"].reshape(-1).bool()
                try:
                    module(**tensors)
                except _Stop:
                    pass
                width = seen["z"].shape[-1]
                x = seen["x"].reshape(-1, seen["x"].shape[-1])[real].double().numpy() if want_input else None
                captured.append((x, seen["z"].reshape(-1, width)[real].double().numpy(), seen["s"].reshape(-1, width)[real].double().numpy()))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _refit(linear: Any, student: list[tuple[np.ndarray, ...]], teacher: list[tuple[np.ndarray, ...]]) -> float:
    """Solve the ridge least squares for ``linear`` in place; returns the relative residual."""
    import torch

    width = linear.in_features + 1
    gram = np.zeros((width, width))
    cross = np.zeros((width, linear.out_features))
    target_energy = residual_energy = 0.0
    for (x, z, s), (_, _, s_teacher) in zip(student, teacher):
        target = s_teacher - (s - z)
        design = np.hstack([x, np.ones((x.shape[0], 1))])
        gram += design.T @ design
        cross += design.T @ target
        target_energy += float((target**2).sum())
    ridge = RIDGE * float(np.mean(np.diag(gram)))
    solution = np.linalg.solve(gram + ridge * np.eye(width), cross)
    for (x, z, s), (_, _, s_teacher) in zip(student, teacher):
        target = s_teacher - (s - z)
        fitted = np.hstack([x, np.ones((x.shape[0], 1))]) @ solution
        residual_energy += float(((fitted - target) ** 2).sum())
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(solution[:-1].T.copy()).to(linear.weight.dtype))
        linear.bias.copy_(torch.from_numpy(solution[-1].copy()).to(linear.bias.dtype))
    return residual_energy / max(target_energy, 1e-30)


def reconstruct(student: Any, student_layers: list[LayerParts], teacher: Any, teacher_layers: list[LayerParts], batches: list[Feeds]) -> list[dict[str, float]]:
    """Re-fit every pruned layer's two output projections, first layer first."""
    fits = []
    for s_layer, t_layer in zip(student_layers, teacher_layers):
        row = {}
        for kind, s_proj, s_norm, t_proj, t_norm in (
            ("attention", s_layer.output, s_layer.attention_norm, t_layer.output, t_layer.attention_norm),
            ("ffn", s_layer.ffn_out, s_layer.ffn_norm, t_layer.ffn_out, t_layer.ffn_norm),
        ):
            taught = _capture(teacher, t_proj, t_norm, batches, want_input=False)
            learned = _capture(student, s_proj, s_norm, batches, want_input=True)
            row[kind] = round(_refit(s_proj, learned, taught), 5)
        fits.append(row)
    return fits
