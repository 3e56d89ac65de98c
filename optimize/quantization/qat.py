"""Quantization-aware distillation (``--qat STEPS``): train the model under the export's int8 scheme.

Post-training int8 keeps some layers fp32 to stay within the accuracy budget, and loses a
little everywhere else. Here the post-training plan (which layers are int8, each one's calibrated
input range, SmoothQuant factors, outlier channels) is taken as the start, the PyTorch model is
run with exactly the arithmetic the int8 pass emits for it, and its weights and activation ranges
are trained to match the fp32 model on unlabelled text:

- each planned layer's input is divided by its smoothing factors (or loses its outlier channels,
  whose product is computed in fp32 beside), then fake-quantized per tensor (uint8 with a zero
  point for ONNX Runtime, int8 symmetric for TensorRT) from the planned range, which is then
  learned (LSQ+: scale in log space and zero point by gradient, Bhalgat et al. 2020);
- its weight (times the smoothing factors) is fake-quantized per output channel, symmetric int8
  with its max as the scale, recomputed each step (``ranges.quantize_weight`` at export);
- the large embedding tables, where the target stores them int8 per row, likewise;
- Q, K and V share one input quantizer (one QAttention / one Q/DQ in the graph).

The loss is the pruning recovery's (``pruning.recover.distil``): every layer's hidden states
and the pooled output of the fp32 teacher, and its class probabilities for classifiers. After
training the wrappers are removed; each layer's plan, with its learned range, travels to the
int8 pass keyed by the layer's trained weights (``weight_key``), and the pass emits it as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimize.calibration.ranges import QuantParams, activation_form
from optimize.runtimes.base import Feeds

#: weights move little: the model is already trained, only the rounding has to be absorbed.
#: Measured on the embedded BERT, 300 steps from the post-training plan (PyTorch-side cosine
#: mean / min, held-out | unseen domain): post-training 0.99840 / 0.99491 | 0.99829 / 0.99625;
#: these rates 0.99886 / 0.99525 | 0.99874 / 0.99605; ranges fixed (weights only, 2e-5)
#: 0.99866 / 0.99362 | 0.99852 / 0.99619; 2e-5 / 5e-3 / 5e-2 for 400 steps reached the best
#: means (0.99906 | 0.99896) but clipped one review to 0.9896.
WEIGHT_LEARNING_RATE = 1e-5
#: activation scales are learned in log space (a relative step), zero points in integer steps
LOG_SCALE_LEARNING_RATE = 1e-3
ZERO_POINT_LEARNING_RATE = 1e-2


def weight_key(matrix_in_out: np.ndarray) -> str:
    """Identifies a linear layer by its weights: the first output column of a [in, out] matrix.

    The same in PyTorch (row 0 of ``nn.Linear.weight``) and in the exported graph (column 0 of a
    MatMul weight, or of a fused Attention's packed Q|K|V weight, whose first columns are Q's):
    export and fusion copy weights bit for bit.
    """
    column = np.ascontiguousarray(matrix_in_out[:, 0], dtype=np.float32)
    return f"{column.shape[0]}:{hashlib.sha1(column.tobytes()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Int8Scheme:
    """What the int8 pass of a target emits, so that training can mirror it exactly."""

    symmetric_activations: bool  # int8 zero point 0 (TensorRT) or uint8 with a zero point (ONNX Runtime)
    int8_embeddings: bool  # large embedding tables stored int8 per row
    embedding_min_elements: int = 1 << 20


@dataclass(frozen=True)
class LayerScheme:
    """How one linear layer's input is quantized: the int8 pass's decision, without its graph names."""

    params: QuantParams
    smooth: np.ndarray | None = None  # per input channel: input divided, weight rows multiplied
    outliers: np.ndarray | None = None  # input channels computed in fp32 beside the int8 product
    shift: float = 0.0  # added to the input before quantization, taken back in the bias (ranges.centred_params)


@dataclass
class QatOutcome:
    module: Any  # the trained fp32 module, wrappers removed
    schemes: dict[str, LayerScheme]  # weight_key of the trained weights -> the layer's plan, learned range
    report: dict[str, Any] = field(default_factory=dict)


def _torch():
    import torch

    return torch


def _range_of(params: QuantParams, shift: float = 0.0) -> tuple[float, float]:
    """The real interval a per-tensor quantization covers (of the input before its shift)."""
    low, high = (-128, 127) if params.symmetric else (0, 255)
    return (low - params.zero_point) * params.scale - shift, (high - params.zero_point) * params.scale - shift


def _modules():
    """The torch modules, defined on first use so this file imports without torch."""
    torch = _torch()
    nn = torch.nn

    class ActivationQuant(nn.Module):
        """Per-tensor fake quantization with a learned scale (log space) and zero point."""

        def __init__(self, params: QuantParams, shift: float = 0.0) -> None:
            super().__init__()
            self.symmetric = params.symmetric
            # the centring shift (emit.py's Add before the QuantizeLinear, taken back in the bias)
            # stays as calibrated: the learned scale fits the grid around it
            self.register_buffer("shift", torch.tensor([float(shift)], dtype=torch.float32))
            self.qmin, self.qmax = (-128, 127) if params.symmetric else (0, 255)
            self.log_scale = nn.Parameter(torch.tensor([math.log(params.scale)], dtype=torch.float32))
            self.zero_point = nn.Parameter(torch.tensor([float(params.zero_point)]), requires_grad=not params.symmetric)

        def forward(self, x):  # noqa: ANN001, ANN201
            scale = self.log_scale.exp()
            grad_factor = 1.0 / math.sqrt(max(x.numel(), 1) * self.qmax)
            quantized = torch._fake_quantize_learnable_per_tensor_affine(x + self.shift, scale, self.zero_point, self.qmin, self.qmax, grad_factor)
            return quantized - self.shift

        def params(self) -> QuantParams:
            zero_point = 0 if self.symmetric else int(np.clip(round(float(self.zero_point.detach())), self.qmin, self.qmax))
            return QuantParams(float(self.log_scale.detach().exp()), zero_point, self.symmetric)

    def fake_quant_rows(weight, axis: int):  # noqa: ANN001, ANN202
        """Symmetric int8 per channel along ``axis``, max as the scale: ranges.quantize_weight."""
        reduce = 1 - axis
        scale = (weight.detach().abs().amax(dim=reduce) / 127.0).clamp_min(1e-12)
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, axis, -127, 127)

    class FakeQuantLinear(nn.Module):
        """What emit.py writes for one layer: transform, quantize, int8 product (+ fp32 outliers)."""

        def __init__(self, linear, activation: ActivationQuant, scheme: LayerScheme) -> None:  # noqa: ANN001
            super().__init__()
            self.linear, self.activation = linear, activation
            width = linear.in_features
            factor = torch.ones(width) if scheme.smooth is None else 1.0 / torch.from_numpy(scheme.smooth.astype(np.float32))
            kept = torch.ones(width)
            if scheme.outliers is not None:
                kept[torch.from_numpy(scheme.outliers.astype(np.int64))] = 0.0
            self.register_buffer("factor", factor * kept)  # the input transform (Decision.input_transform)
            self.register_buffer("weight_rows", (1.0 / factor) * kept if scheme.smooth is not None else kept)
            # a buffer, so that it moves with the module when training runs on a GPU
            self.register_buffer("outliers", None if scheme.outliers is None else torch.from_numpy(scheme.outliers.astype(np.int64)))

        def forward(self, x):  # noqa: ANN001, ANN201
            weight = self.linear.weight
            quantized = fake_quant_rows(weight * self.weight_rows, 0)
            out = nn.functional.linear(self.activation(x * self.factor), quantized, self.linear.bias)
            if self.outliers is not None:
                out = out + x[..., self.outliers] @ weight[:, self.outliers].T
            return out

    class FakeQuantEmbedding(nn.Module):
        def __init__(self, embedding) -> None:  # noqa: ANN001
            super().__init__()
            self.embedding = embedding

        def forward(self, ids):  # noqa: ANN001, ANN201
            e = self.embedding
            return nn.functional.embedding(ids, fake_quant_rows(e.weight, 0), e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)

    return ActivationQuant, FakeQuantLinear, FakeQuantEmbedding


def _input_groups(module: Any, head_size: int) -> list[list[tuple[Any, str, Any]]]:
    """Linear layers that read the same tensor, as (parent, attribute, linear) triples: Q, K and
    V of each layer together, every other nn.Linear alone."""
    torch = _torch()
    from optimize.pruning.structure import encoder_layers

    shared: dict[int, int] = {}
    groups: list[list[tuple[Any, str, Any]]] = []
    try:
        layers = encoder_layers(module, head_size)
    except Exception:  # noqa: BLE001 - an architecture pruning does not know: every linear alone
        layers = []
    for layer in layers:
        index = len(groups)
        groups.append([])
        for linear in layer.qkv:
            shared[id(linear)] = index
    for parent in module.modules():
        for name, child in parent.named_children():
            if not isinstance(child, torch.nn.Linear):
                continue
            if id(child) in shared:
                groups[shared[id(child)]].append((parent, name, child))
            else:
                groups.append([(parent, name, child)])
    return [g for g in groups if g]


class FakeQuantized:
    """``with FakeQuantized(module, scheme, head_size, plan) as fq:`` runs ``module`` with the int8
    arithmetic of ``plan`` (weight_key -> LayerScheme: the int8 pass's decisions) until the block
    ends; layers outside the plan stay fp32. ``fq.schemes()`` are the plan with the learned ranges,
    keyed by the weights as they are then, as the int8 pass takes them."""

    def __init__(self, module: Any, scheme: Int8Scheme, head_size: int, plan: dict[str, LayerScheme]) -> None:
        self.module, self.scheme = module, scheme
        self.groups: list[list[tuple[Any, str, Any]]] = []
        self.planned: list[LayerScheme] = []
        for group in _input_groups(module, head_size):
            keys = [weight_key(linear.weight.detach().T.numpy()) for _, _, linear in group]
            found = next((plan[k] for k in keys if k in plan), None)
            if found is not None:
                self.groups.append(group)
                self.planned.append(found)
        self.quantizers: list[Any] = []
        self.embeddings: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> FakeQuantized:
        torch = _torch()
        ActivationQuant, FakeQuantLinear, FakeQuantEmbedding = _modules()
        for group, planned in zip(self.groups, self.planned):
            quantizer = ActivationQuant(planned.params, planned.shift)
            self.quantizers.append(quantizer)
            for parent, name, linear in group:
                setattr(parent, name, FakeQuantLinear(linear, quantizer, planned))
        if self.scheme.int8_embeddings:
            for parent in list(self.module.modules()):
                for name, child in parent.named_children():
                    if isinstance(child, torch.nn.Embedding) and child.weight.numel() >= self.scheme.embedding_min_elements:
                        setattr(parent, name, FakeQuantEmbedding(child))
                        self.embeddings.append((parent, name, child))
        return self

    def __exit__(self, *_: Any) -> None:
        """The wrappers never outlive the block, even when training is interrupted."""
        for group in self.groups:
            for parent, name, linear in group:
                setattr(parent, name, linear)
        for parent, name, embedding in self.embeddings:
            setattr(parent, name, embedding)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: weights, log scales and zero points, each at its own learning rate."""
        quantizer_params = {id(p) for q in self.quantizers for p in q.parameters()}
        weights = [p for p in self.module.parameters() if p.requires_grad and id(p) not in quantizer_params]
        groups = [
            {"params": weights, "lr": WEIGHT_LEARNING_RATE},
            {"params": [q.log_scale for q in self.quantizers], "lr": LOG_SCALE_LEARNING_RATE},
        ]
        if not self.scheme.symmetric_activations:
            groups.append({"params": [q.zero_point for q in self.quantizers], "lr": ZERO_POINT_LEARNING_RATE})
        return groups

    def schemes(self) -> dict[str, LayerScheme]:
        return {
            weight_key(linear.weight.detach().T.numpy()): dataclasses.replace(planned, params=quantizer.params())
            for group, planned, quantizer in zip(self.groups, self.planned, self.quantizers)
            for _, _, linear in group
        }

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "inputs_of": [name for _, name, _ in group],
                "form": "int8+smooth" if planned.smooth is not None else "int8+split" if planned.outliers is not None else "int8",
                "start": [round(v, 5) for v in _range_of(planned.params, planned.shift)],
                "learned": [round(v, 5) for v in _range_of(quantizer.params(), planned.shift)],
            }
            for group, planned, quantizer in zip(self.groups, self.planned, self.quantizers)
        ]


def train(
    student: Any,
    teacher: Any,
    scheme: Int8Scheme,
    plan: dict[str, LayerScheme],
    training_batches: Callable[[int], Iterator[Feeds]],
    steps: int,
    *,
    head_size: int,
    classifier: bool,
    progress: Callable[[int, float], None] | None = None,
    device: str = "cpu",
    layer_map: list[int] | None = None,
) -> QatOutcome:
    """Train ``student`` in place under ``scheme`` against ``teacher``; returns it unwrapped with
    the learned input ranges of every linear layer. ``layer_map``: the teacher layer each student
    layer is trained towards, where --drop-layers removed some (recover.distil)."""
    from optimize.pruning.recover import distil

    started = time.perf_counter()
    with FakeQuantized(student, scheme, head_size, plan) as quantized:
        recovery = distil(
            student, teacher, training_batches, steps, classifier=classifier, progress=progress,
            parameter_groups=quantized.parameter_groups(), device=device, layer_map=layer_map,
        )
    schemes = quantized.schemes()  # after the block: keyed by the trained weights of the plain modules
    report = {
        **recovery,
        "activations": activation_form(scheme.symmetric_activations, any(p.shift for p in quantized.planned)),
        "linear_layers": len(schemes),
        "input_quantizers": len(quantized.quantizers),
        "int8_embeddings": [name for _, name, _ in quantized.embeddings],
        "ranges": quantized.report(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return QatOutcome(student, schemes, report)


def quantization_aware_distillation(
    loaded: Any, teacher: Any, scheme: Int8Scheme, plan: dict[str, LayerScheme], calibration: Any, steps: int,
    progress: Callable[[str], None] = lambda line: None,
    device: str = "cpu",
    layer_map: list[int] | None = None,
) -> tuple[Any, QatOutcome]:
    """``loaded`` (possibly pruned) trained for ``steps`` under ``scheme`` and the post-training
    ``plan`` against ``teacher`` (the unpruned fp32 module) on the calibration text; returns a
    copy and the outcome."""
    import copy

    from optimize.calibration.batches import length_bucketed_batches
    from optimize.calibration.corpus import calibration_texts
    from optimize.pruning import RECOVERY_TEXTS

    seq_len = min(calibration.seq_len, loaded.max_sequence)
    texts = calibration_texts(calibration.path, RECOVERY_TEXTS, calibration.text_column)

    def batches(epoch: int) -> Iterator[Feeds]:  # every text once per epoch, reshuffled each time
        return length_bucketed_batches(loaded.tokenizer, texts, loaded.input_names, batch_size=16, seq_len=seq_len, seed=1000 + epoch)

    student = copy.deepcopy(loaded.module).eval()
    outcome = train(
        student, teacher, scheme, plan, batches, steps,
        head_size=loaded.hidden_size // loaded.num_heads, classifier=loaded.task == "text-classification",
        progress=lambda step, loss: progress(f"quantization-aware distillation: step {step}/{steps} (loss {loss:.4f})"),
        device=device, layer_map=layer_map,
    )
    outcome.report["texts"] = len(texts)
    description = f"{loaded.description}, trained for int8 ({steps} steps of quantization-aware distillation)"
    return dataclasses.replace(loaded, module=outcome.module, description=description), outcome
