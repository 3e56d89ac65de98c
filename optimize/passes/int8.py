"""Static INT8 with streamed calibration, outlier migration and an accuracy budget.

1. find the linear layers (passes targets to quantization/targets.py);
2. stream the calibration text through the fp32 graph, keeping statistics only;
3. SmoothQuant factors per layer from per-channel activation and weight maxima, and a
   second streamed pass for the statistics of the migrated activations;
4. the budget search (quantization/search.py) on held-back calibration text;
5. emit the chosen layers as ONNX Runtime int8 ops or as symmetric Q/DQ for TensorRT.
"""

from __future__ import annotations

import time

import numpy as np
import onnx_ir as ir

from optimize.calibration.ranges import QuantParams, activation_form, centred_params, quant_params, value_range
from optimize.calibration.source import CalibrationSource
from optimize.calibration.stats import StatsReport, collect
from optimize.config import QuantConfig, SessionConfig
from optimize.errors import InputError, PassError
from optimize.passes.base import OptimizePass
from optimize.quantization.emit import Decision, SiteDecision, emit
from optimize.quantization.qat import LayerScheme, weight_key

#: placeholder parameters for decisions built only to compute their input transform.
_UNSET = QuantParams(1.0, 0, False)
from optimize.quantization.search import SENSITIVITY_TEXTS, Budget, Evaluator, search
from optimize.quantization.targets import LinearTarget, find_targets, find_trt_sites

#: held-back text is not the parity text: on it, spend only this share of each allowed loss
#: (mean cosine 0.99 -> 0.992 on held-back text, minimum 0.97 -> 0.976, agreement 0.95 -> 0.96).
HELD_BACK_SHARE = 0.8


def held_back_budget(quant: QuantConfig) -> Budget:
    def spend(tolerance: float) -> float:
        return 1.0 - HELD_BACK_SHARE * (1.0 - tolerance)

    return Budget(spend(quant.min_cosine), spend(quant.min_cosine_floor), spend(quant.min_agreement))


#: a channel whose absolute maximum passes this multiple of the median channel's is an outlier.
OUTLIER_RATIO = 6.0


def outlier_channels(channel_absmax: np.ndarray) -> np.ndarray | None:
    """The few channels (at most 1 in 128) that dwarf the rest; None when there are none."""
    threshold = OUTLIER_RATIO * float(np.median(channel_absmax))
    order = np.argsort(channel_absmax)[::-1][: max(1, channel_absmax.shape[0] // 128)]
    picked = np.sort(order[channel_absmax[order] > threshold])
    return picked.astype(np.int64) if picked.size else None


def smoothing_factor(activation_absmax: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1-alpha), bounded to keep both sides sane."""
    weight_absmax = np.abs(weight).max(axis=1)
    s = np.power(np.maximum(activation_absmax, 1e-5), alpha) / np.power(np.maximum(weight_absmax, 1e-5), 1.0 - alpha)
    return np.clip(s, 1e-2, 1e2).astype(np.float32)


def _unsupported(model: ir.Model, targets: list[LinearTarget], style: str, keep: tuple[str, ...]) -> dict[str, str]:
    nodes = {n.name: n for n in model.graph}
    reasons: dict[str, str] = {}
    for target in targets:
        if target.label in keep or target.node in keep:
            reasons[target.node] = "kept fp32 on request (--keep-fp32)"
        elif target.op == "Attention":
            inputs = list(nodes[target.node].inputs) + [None] * 6
            if style != "ort":
                reasons[target.node] = "no int8 kernel for a fused Attention in Q/DQ form"
            elif inputs[5] is not None or inputs[3] is None:
                reasons[target.node] = "QAttention takes only a 2-D mask_index and this Attention has an additive bias"
    return reasons


class Int8Pass(OptimizePass):
    name = "int8"

    def __init__(
        self,
        quant: QuantConfig,
        source: CalibrationSource,
        *,
        task: str,
        output: str,
        style: str = "ort",
        sites: bool = False,
        session: SessionConfig = SessionConfig(),
        fixed: dict[str, LayerScheme] | None = None,
    ) -> None:
        """``style`` "ort" emits ONNX Runtime int8 ops, "qdq" standard Q/DQ; ``sites`` adds
        TensorRT's fusion sites (attention batched MatMuls, residual Adds) as candidates.
        ``fixed``: the plan --qat trained under (with its learned ranges), keyed by qat.weight_key
        of each layer's weights; those layers take it as it is. After a run, ``plan`` holds this
        run's decisions in the same form (what --qat starts from)."""
        super().__init__()
        self.quant, self.source, self.task, self.output, self.style, self.session = quant, source, task, output, style, session
        self.sites = sites
        self.fixed = fixed or {}
        self.plan: dict[str, LayerScheme] = {}

    def _statistics(self, model: ir.Model, names: list[str], channels: bool = True) -> StatsReport:
        # histograms only where the range method reads them: minmax needs none
        histogram = self.quant.method != "minmax"
        report = collect(model, names, self.source.batches(), self.session, channels=channels, histogram=histogram)
        if report.texts == 0:
            raise InputError("the calibration text produced no batches", "pass --calibration FILE with some text")
        bad = [s.name for s in report.tensors.values() if s.nonfinite]
        if bad:
            raise PassError(f"calibration saw NaN or Inf in {len(bad)} activations (first: {bad[0]})", "check the fp32 model on this text")
        return report

    def run(self, model: ir.Model) -> bool:
        started = time.perf_counter()
        targets = find_targets(model)
        if not targets:
            self.stats = {"int8_layers": 0, "reason": "no linear layer with a constant weight"}
            return False
        sites = find_trt_sites(model) if self.sites else []
        base = ir.to_proto(model).SerializeToString()
        nodes = {n.name: n for n in model.graph}
        keys = {t.node: weight_key(nodes[t.node].inputs[1].const_value.numpy()) for t in targets}  # type: ignore[union-attr]
        learned = {t.node: self.fixed[keys[t.node]] for t in targets if keys[t.node] in self.fixed}
        if self.fixed and not learned:
            raise PassError(
                "the int8 pass found none of the layers that quantization-aware distillation trained",
                "report this with the model; export without --qat meanwhile",
            )
        calibrated = [t for t in targets if t.node not in learned]
        activations = list(dict.fromkeys([t.activation for t in calibrated] + [a for s in sites for a in s.activations]))
        plain_stats = self._statistics(model, activations) if activations else StatsReport({}, 0, 0)
        calibration_seconds = time.perf_counter() - started

        decisions: dict[str, dict[str, Decision]] = {}
        report = plain_stats
        probes: dict[tuple[str, str], np.ndarray] = {}  # (node, variant) -> input transform to observe
        shapes: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        for t in calibrated:
            channel = plain_stats.tensors[t.activation].channel_absmax
            smooth = outliers = None
            if channel is not None and channel.shape[0] == t.in_features:
                if self.quant.smooth_alpha is not None:
                    # a group's factor must suit every weight it multiplies: rows over all of them
                    weight = np.concatenate([nodes[n].inputs[1].const_value.numpy() for n in t.nodes], axis=1)  # type: ignore[union-attr]
                    smooth = smoothing_factor(channel, weight, self.quant.smooth_alpha)
                if t.op == "MatMul":  # QAttention cannot take an fp32 side product
                    outliers = outlier_channels(channel)
            shapes[t.node] = (smooth, outliers)
            if smooth is not None:
                probes[(t.node, "int8+smooth")] = Decision(t, _UNSET, smooth=smooth).input_transform()  # type: ignore[assignment]
            if outliers is not None:
                probes[(t.node, "int8+split")] = Decision(t, _UNSET, outliers=outliers).input_transform()  # type: ignore[assignment]
        observed: dict[tuple[str, str], str] = {}
        if probes:
            probe = ir.from_proto(ir.to_proto(model))
            observed = _insert_probes(probe, probes)
            extra = self._statistics(probe, list(observed.values()), channels=False)
            report = StatsReport({**plain_stats.tensors, **extra.tensors}, plain_stats.batches, plain_stats.texts)
        calibration_seconds = time.perf_counter() - started

        def params(name: str) -> QuantParams:
            low, high = value_range(report.tensors[name], self.quant.method)
            return quant_params(low, high, self.quant.symmetric_activations)

        # symmetric Q/DQ (TensorRT): a linear layer's input is centred first, its bias takes the
        # shift back (ranges.centred_params); the fusion sites have no bias to take it
        centre = self.quant.symmetric_activations and self.style == "qdq"

        def linear(t: LinearTarget, observed_as: str, **transform: np.ndarray | None) -> Decision:
            if not centre:
                return Decision(t, params(observed_as), **transform)  # type: ignore[arg-type]
            centred, shift = centred_params(*value_range(report.tensors[observed_as], self.quant.method))
            return Decision(t, centred, shift=shift, **transform)  # type: ignore[arg-type]

        for t in targets:
            if t.node in learned:  # trained for this form: taken as it is
                fixed = learned[t.node]
                decisions[t.node] = {"int8": Decision(t, fixed.params, smooth=fixed.smooth, outliers=fixed.outliers, shift=fixed.shift)}
                continue
            smooth, outliers = shapes[t.node]
            options = {"int8": linear(t, t.activation)}
            if (t.node, "int8+smooth") in observed:
                options["int8+smooth"] = linear(t, observed[(t.node, "int8+smooth")], smooth=smooth)
            if (t.node, "int8+split") in observed:
                options["int8+split"] = linear(t, observed[(t.node, "int8+split")], outliers=outliers)
            decisions[t.node] = options
        for site in sites:
            decisions[site.node] = {"int8": SiteDecision(site, tuple(params(a) for a in site.activations))}

        held_back = self.source.held_back(leading=SENSITIVITY_TEXTS)
        evaluator = Evaluator(base, held_back, self.task, self.output, self.session)
        budget = held_back_budget(self.quant)
        unsupported = _unsupported(model, targets, self.style, self.quant.keep_fp32)
        plan = search(base, [*targets, *sites], decisions, evaluator, budget, self.style, unsupported)
        self.plan = {keys[d.target.node]: LayerScheme(d.params, d.smooth, d.outliers, d.shift) for d in plan.decisions if isinstance(d, Decision)}
        emit(model, plan.decisions, self.style)

        stats_texts, held_texts = self.source.counts()
        linear = [d for d in plan.decisions if isinstance(d, Decision)]
        self.stats = {
            "style": self.style,
            "method": self.quant.method,
            "activations": activation_form(self.quant.symmetric_activations, centre),
            "weights": "int8 symmetric per output channel",
            "smooth_alpha": self.quant.smooth_alpha,
            "qat_layers": len(learned),
            "calibration_texts": stats_texts,
            "calibration_batches": report.batches,
            "held_back_texts": held_texts,
            "calibration_seconds": round(calibration_seconds, 1),
            "search_seconds": round(plan.seconds, 1),
            "evaluations": plan.evaluations,
            "budget_held_back": [round(budget.cosine_mean, 4), round(budget.cosine_min, 4), round(budget.agreement, 4)],
            "held_back_all_int8_plain": _score(plan.all_int8_plain),
            "held_back_all_int8_chosen": _score(plan.all_int8_chosen),
            "held_back_final": _score(plan.final),
            "int8_layers": len(linear),
            "smoothed_layers": sum(1 for d in linear if d.smooth is not None),
            "split_layers": sum(1 for d in linear if d.outliers is not None),
            "fp32_layers": len(targets) - len(linear),
            "activation_sites": len(sites),
            "int8_sites": sum(1 for d in plan.decisions if isinstance(d, SiteDecision)),
            "layers": [layer.as_dict() for layer in plan.layers],
            "notes": plan.notes,
        }
        return bool(plan.decisions)


def _score(score) -> list[float | None] | None:  # noqa: ANN001
    if score is None:
        return None
    agreement = round(score.agreement, 4) if score.agreement is not None else None
    return [round(score.cosine_mean, 6), round(score.cosine_min, 6), agreement]


def _insert_probes(model: ir.Model, probes: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], str]:
    """Add each variant's input transform beside its layer, as a side branch that is only
    observed: the layers still read their true fp32 activations, so every statistic is of
    the real activation transformed, not of an already perturbed graph."""
    graph = model.graph
    nodes = {n.name: n for n in graph}
    names: dict[tuple[str, str], str] = {}
    for (node_name, variant), factor in probes.items():
        node = nodes[node_name]
        tag = variant.replace("+", "_")
        constant = ir.Value(name=f"{node_name}_{tag}_probe", const_value=ir.tensor(factor.astype(np.float32)))
        graph.register_initializer(constant)
        mul = ir.node("Mul", [node.inputs[0], constant], name=f"{node_name}_{tag}_probe_mul")
        mul.outputs[0].name = f"{node_name}_{tag}_observed"
        graph.insert_before(node, mul)
        names[(node_name, variant)] = mul.outputs[0].name
    return names
