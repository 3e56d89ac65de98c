"""Retraining-free reconstruction: re-fit each pruned layer's linear layers by least squares.

After heads and neurons are cut, each layer's attention output projection and second FFN
linear are re-fitted, layer by layer from the first, so that the residual sum after each branch
in the pruned model matches the unpruned model's (what enters the following LayerNorm in a
post-norm layer; in a pre-norm one, what enters the FFN's norm, and the layer's output):

    minimise  || [X_kept, 1] W  -  (S_teacher - R_student) ||^2  + ridge

where X_kept are the pruned model's inputs to the projection, S that residual sum (projection
output + residual) and R_student = S_student - projection output the pruned model's own
residual; the column of ones (the bias) only where the linear has a bias. Fitting to the
teacher's sum, not to the teacher's projection output, also absorbs the drift that earlier
layers left in the residual (Kwon et al. 2022 tune the kept rows' scales by least squares; this
fits the whole matrix, which has more freedom). The input side (Q, K and V, or V alone where Q
and K also project what the fit does not see, and the first FFN linear) is fitted to the
teacher's outputs at the kept heads and neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from optimize.pruning.structure import LayerParts, unit_index
from optimize.runtimes.base import Feeds

#: ridge strength relative to the mean diagonal of the Gram matrix: keeps near-collinear
#: activations (GELU tails, low-rank heads) from blowing the fit up. Measured at 30%: 1e-3 0.9299,
#: 1e-2 0.9328, 1e-1 lower again. (Weighting tokens by 1 / their LayerNorm variance, so each
#: token's relative error counts as LayerNorm will see it, gave 0.9303: left out.)
RIDGE = 1e-2


#: each token's weight in the fit is 1 / (its text's length) ** TEXT_WEIGHT_POWER: 0 weighs every
#: token alike (long paragraphs dominate), 1 every text alike (short sentences count as much).
TEXT_WEIGHT_POWER = 1.0
#: also re-fit the input side (Q, K, V and the first FFN linear) to the teacher's outputs
INPUT_SIDE = True
#: the output side's ridge pulls towards the current weights (True) or towards zero (False): at 30%,
#: unseen-domain cosine 0.9196 -> 0.9214, held-out 0.9428 -> 0.9441
OUTPUT_PRIOR = True


def token_weights(mask: Any) -> Any:
    """Weights of the real tokens of a batch (row-major, as ``_real`` picks them), mean 1."""
    lengths = mask.sum(dim=1, keepdim=True).double()
    weights = (lengths.clamp_min(1.0) ** -TEXT_WEIGHT_POWER).expand_as(mask)[mask.bool()]
    return weights / weights.mean()


class _Stop(Exception):
    """Raised by a hook once what is needed has been seen: the rest of the forward is skipped."""


@dataclass(frozen=True)
class _BlockCall:
    """One batch's call of an encoder layer: its arguments, and which tokens are real."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    real: Any  # torch.bool [batch * seq]
    weight: Any  # torch.float64 [real tokens]: each token's weight in the fit


def _layer_calls(module: Any, blocks: list[Any], batches: list[Feeds]) -> list[list[_BlockCall]]:
    """Each layer's own call, per batch, as ``module`` makes it: the first layer's with its
    hidden-state input, the others' with that input left out (``None``), to be filled in as the
    fit advances layer by layer.

    Layers may get different arguments: ModernBERT gives its local layers a sliding-window mask
    and the local rotary table, its global ones the full mask and the global table. The first
    batch runs every layer to see that; where every layer gets the very same tensors as the
    first (BERT and most families), the other batches only run the embeddings. The tensors are
    kept by reference, and layers share them, so this costs little memory. A layer used several
    times (ALBERT) keeps its first use."""
    import torch

    seen: dict[int, tuple[tuple, dict]] = {}
    wanted = {"last": len(blocks) - 1}

    def hook(index: int):
        def record(_m: Any, args: tuple, kwargs: dict) -> None:
            if index not in seen:
                seen[index] = ((args[0] if index == 0 else None, *args[1:]), kwargs)
            if index == wanted["last"]:  # nothing after this layer's input is needed
                raise _Stop()

        return record

    handles = [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    calls: list[list[_BlockCall]] = [[] for _ in blocks]
    try:
        with torch.inference_mode():
            for feeds in batches:
                seen.clear()
                tensors = {k: torch.from_numpy(v).long() for k, v in feeds.items()}
                try:
                    module(**tensors)
                except _Stop:
                    pass
                if wanted["last"] > 0 and calls[0] == [] and all(_same_arguments(seen[i], seen[0]) for i in seen):
                    wanted["last"] = 0  # every layer gets the first one's arguments: run only the embeddings from now on
                mask = tensors["attention_mask"]
                real, weight = mask.reshape(-1).bool(), token_weights(mask)
                for index in range(len(blocks)):
                    args, kwargs = seen[index] if index in seen else seen[0]
                    if index > 0:
                        args = (None, *args[1:])
                    calls[index].append(_BlockCall(args, kwargs, real, weight))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _same_arguments(a: tuple[tuple, dict], b: tuple[tuple, dict]) -> bool:
    """The same tensors (by identity), apart from the hidden-state input."""
    (a_args, a_kwargs), (b_args, b_kwargs) = a, b
    return (
        len(a_args) == len(b_args)
        and all(x is y for x, y in zip(a_args[1:], b_args[1:]))
        and a_kwargs.keys() == b_kwargs.keys()
        and all(a_kwargs[k] is b_kwargs[k] for k in a_kwargs)
    )


def _advance(block: Any, calls: list[_BlockCall], following: list[_BlockCall]) -> list[_BlockCall]:
    """The calls of the next layer: this layer's output as its hidden-state input, beside the
    next layer's own other arguments (``following``)."""
    import torch

    advanced = []
    with torch.inference_mode():
        for call, own in zip(calls, following, strict=True):
            out = block(*call.args, **call.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
            advanced.append(_BlockCall((hidden, *own.args[1:]), own.kwargs, call.real, call.weight))
    return advanced


def _real(tensor: Any, real: Any, exact: bool = True) -> Any:
    """The real tokens' rows (a torch tensor); float64 for the sums of the fit, or kept float32
    (the model's own values, widened exactly later) for what is stored across a whole layer."""
    rows = tensor.reshape(-1, tensor.shape[-1])[real]
    return rows.double() if exact else rows.float()


def _sum_hook(block: Any, norm: Any | None, keep: Callable[[Any], None], stop: bool) -> Any:
    """Hand ``keep`` the residual sum a branch of ``block`` ends in: what enters ``norm``
    (post-norm layers, and a pre-norm layer's attention), or with ``norm`` None what the layer
    returns (a pre-norm layer's FFN). With ``stop`` the layer's forward ends there."""

    def at_norm(_m: Any, args: tuple) -> None:
        keep(args[0])
        if stop:
            raise _Stop()

    if norm is not None:
        return norm.register_forward_pre_hook(at_norm)
    return block.register_forward_hook(lambda _m, _args, out: keep(out[0] if isinstance(out, tuple) else out))


def _capture(block: Any, projection: Any, norm: Any | None, calls: list[_BlockCall]) -> Iterator[tuple[Any, ...]]:
    """Per batch (projection input, projection output, residual sum after it), real tokens only;
    the layer runs only as far as that sum. Yielded batch by batch: the FFN's input is 4x the
    hidden width, and keeping every batch of it in float64 would take GBs for BERT-base and larger."""
    import torch

    seen: dict[str, Any] = {}
    handles = [
        projection.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], z=out)),
        _sum_hook(block, norm, lambda s: seen.update(s=s), stop=True),
    ]
    try:
        for call in calls:
            # not around the yield: inference mode is thread state and would leak to the consumer
            with torch.inference_mode():
                try:
                    block(*call.args, **call.kwargs)
                except _Stop:
                    pass
            yield _real(seen["x"], call.real), _real(seen["z"], call.real), _real(seen["s"], call.real), call.weight
    finally:
        for handle in handles:
            handle.remove()


def _norm_inputs(block: Any, norms: tuple[Any, Any | None], calls: list[_BlockCall]) -> tuple[list[Any], list[Any]]:
    """The residual sums after each of the layer's two branches, per batch, real tokens only
    (one layer call)."""
    import torch

    captured: tuple[list[Any], list[Any]] = ([], [])
    real: dict[str, Any] = {}
    handles = [
        _sum_hook(block, norm, lambda s, i=i: captured[i].append(_real(s, real["mask"], exact=False)), stop=False)
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


def _solve(linears: tuple[Any, ...], stream: Iterator[tuple[Any, Any, Any]], prior: bool) -> float:
    """Ridge least squares for ``linears`` (sharing one input; their outputs side by side) from a
    stream of (input rows, target rows, row weights); writes the solution in place and returns
    the relative residual.

    Only the Gram and cross sums are kept, so the stream may be long; every item must be
    consumed before the weights change (the stream runs the model). With ``prior`` the ridge
    pulls towards the current weights instead of towards zero. The sums are torch's, not numpy's:
    interleaved with the layer's forward, two BLAS thread pools on two cores took turns spinning
    (user time 392 s -> 559 s for the embedded BERT).
    """
    import torch

    # a bias is fitted where the linears have one (ModernBERT's have none); they share one input
    biased = linears[0].bias is not None
    width = linears[0].in_features + int(biased)
    outputs = sum(linear.out_features for linear in linears)
    gram_sum = torch.zeros((width, width), dtype=torch.float64)
    cross_sum = torch.zeros((width, outputs), dtype=torch.float64)
    target_energy = 0.0
    with torch.inference_mode():
        for x, target, weight in stream:
            design = torch.cat([x, torch.ones((x.shape[0], 1), dtype=torch.float64)], dim=1) if biased else x
            weighted = design * weight[:, None]
            gram_sum += weighted.T @ design
            cross_sum += weighted.T @ target
            target_energy += float((weight[:, None] * target**2).sum())
    gram, cross = gram_sum.numpy(), cross_sum.numpy()
    ridge = RIDGE * float(np.mean(np.diag(gram)))
    rhs = cross
    if prior:
        current = np.concatenate(
            [
                np.vstack([linear.weight.detach().double().numpy().T, *([linear.bias.detach().double().numpy()[None]] if biased else [])])
                for linear in linears
            ],
            axis=1,
        )
        rhs = cross + ridge * current
    solution = np.linalg.solve(gram + ridge * np.eye(width), rhs)
    # ||D W - T||^2 from the sums already made, instead of a second pass over the activations
    residual_energy = float(np.sum(solution * (gram @ solution)) - 2 * np.sum(solution * cross) + target_energy)
    start = 0
    with torch.no_grad():
        for linear in linears:
            part = solution[:, start : start + linear.out_features]
            start += linear.out_features
            weights = part[:-1] if biased else part
            linear.weight.copy_(torch.from_numpy(weights.T.copy()).to(linear.weight.dtype))
            if biased:
                linear.bias.copy_(torch.from_numpy(part[-1].copy()).to(linear.bias.dtype))
    return residual_energy / max(target_energy, 1e-30)


def _output_side(student: Iterator[tuple[Any, ...]], teacher: list[Any]) -> Iterator[tuple[Any, Any, Any]]:
    """The output projection's target: the teacher's norm input less the student's own residual."""
    for (x, z, s, weight), s_teacher in zip(student, teacher, strict=True):
        yield x, s_teacher.double() - (s - z), weight


def _input_side(
    s_block: Any, s_linear: Any, t_block: Any, t_linears: tuple[Any, ...], t_stop: Any, kept: Any,
    s_calls: list[_BlockCall], t_calls: list[_BlockCall],
) -> Iterator[tuple[Any, Any, Any]]:
    """Per batch: what the student's ``s_linear`` reads, and what the teacher's ``t_linears``
    write at the kept output features: fitting one to the other absorbs the drift that the
    cut left in this layer's input before it reaches a nonlinearity (softmax, GELU)."""
    import torch

    seen: dict[str, Any] = {}
    # each teacher linear's first call: DeBERTa's Q and K are called again on the relative
    # position embeddings before the layer reaches ``t_stop``
    outputs: dict[int, Any] = {}

    def stop(*_: Any) -> None:
        raise _Stop()

    def student_input(_m: Any, args: tuple) -> None:
        seen["x"] = args[0]
        raise _Stop()

    def first_output(index: int) -> Callable[..., None]:
        def hook(_m: Any, _args: tuple, out: Any) -> None:  # returns None: the output stays the module's
            outputs.setdefault(index, out)

        return hook

    handles = [t.register_forward_hook(first_output(i)) for i, t in enumerate(t_linears)]
    handles.append(t_stop.register_forward_pre_hook(stop))
    handles.append(s_linear.register_forward_pre_hook(student_input))
    try:
        for s_call, t_call in zip(s_calls, t_calls, strict=True):
            outputs.clear()
            with torch.inference_mode():
                for block, call in ((t_block, t_call), (s_block, s_call)):
                    try:
                        block(*call.args, **call.kwargs)
                    except _Stop:
                        pass
                target = torch.cat([_real(outputs[i], t_call.real) for i in range(len(t_linears))], dim=1)[:, kept]
            yield _real(seen["x"], s_call.real), target, s_call.weight
    finally:
        for handle in handles:
            handle.remove()


def reconstruct(
    student: Any,
    student_layers: list[LayerParts],
    teacher: Any,
    teacher_layers: list[LayerParts],
    batches: list[Feeds],
    kept_heads: list[list[int]],
    kept_neurons: list[list[int]],
    teacher_of: list[int] | None = None,
) -> list[dict[str, float]]:
    """Re-fit every layer's linear layers, first layer first.

    Input side (Q, K, V together, or V alone, then the first FFN linear): to the teacher's
    outputs at the kept heads and neurons, from the pruned model's own inputs. Output side
    (attention output, second FFN linear): to the teacher's residual sum after the branch, less
    the pruned model's residual.

    Both models advance one layer at a time from cached layer inputs, so each layer runs a few
    times in all instead of the model running from the embeddings for every fit (1536 texts:
    424 s before, 105 s after), so the fit can afford every calibration text (at 30%, held-out
    cosine 0.945 on 256 texts, 0.973 on 3,151: fewer texts are over-fitted).

    ``teacher_of[k]``: the teacher layer the student's layer k is fitted to (layers dropped from
    the student are run in the teacher only); ``kept_heads`` and ``kept_neurons`` are per student layer.
    """
    teacher_of = teacher_of if teacher_of is not None else list(range(len(student_layers)))
    student_own = _layer_calls(student, [layer.block for layer in student_layers], batches)
    teacher_own = _layer_calls(teacher, [layer.block for layer in teacher_layers], batches)
    student_calls, teacher_calls = student_own[0], teacher_own[0]
    fits = []
    position = 0  # the teacher layer teacher_calls are the inputs of
    for index, s_layer in enumerate(student_layers):
        while position < teacher_of[index]:  # through the layers the student no longer has
            teacher_calls = _advance(teacher_layers[position].block, teacher_calls, teacher_own[position + 1])
            position += 1
        t_layer = teacher_layers[position]
        targets = _norm_inputs(t_layer.block, (t_layer.attention_norm, t_layer.ffn_norm), teacher_calls)
        row = {}
        if INPUT_SIDE:
            # the teacher's Q, K and V outputs side by side (or its fused QKV output: the same
            # layout), at the kept heads of the copies the student's fitted linears write
            fitted, first = s_layer.fitted_qkv()
            width = t_layer.heads * t_layer.head_size
            qkv = unit_index(kept_heads[index], t_layer.head_size, 3 - first, width) + first * width
            s_stream = _input_side(s_layer.block, fitted[0], t_layer.block, t_layer.qkv, t_layer.output, qkv, student_calls, teacher_calls)
            row["qkv" if first == 0 else "v"] = round(_solve(fitted, s_stream, prior=True), 5)
        row["attention"] = round(_solve((s_layer.output,), _output_side(_capture(s_layer.block, s_layer.output, s_layer.attention_norm, student_calls), targets[0]), prior=OUTPUT_PRIOR), 5)
        if INPUT_SIDE:
            neurons = unit_index(kept_neurons[index], 1, t_layer.ffn_copies, t_layer.neurons)
            row["ffn_in"] = round(_solve((s_layer.ffn_in,), _input_side(s_layer.block, s_layer.ffn_in, t_layer.block, (t_layer.ffn_in,), t_layer.ffn_out, neurons, student_calls, teacher_calls), prior=True), 5)
        row["ffn"] = round(_solve((s_layer.ffn_out,), _output_side(_capture(s_layer.block, s_layer.ffn_out, s_layer.ffn_norm, student_calls), targets[1]), prior=OUTPUT_PRIOR), 5)
        fits.append(row)
        if index + 1 < len(student_layers):
            student_calls = _advance(s_layer.block, student_calls, student_own[index + 1])
            teacher_calls = _advance(t_layer.block, teacher_calls, teacher_own[position + 1])
            position += 1
    return fits
