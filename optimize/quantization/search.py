"""The accuracy budget: measure each layer's sensitivity, then keep as much in int8 as the budget allows.

Every number here is measured by running the candidate graph in ONNX Runtime on held-back
calibration text (never the parity text) against the fp32 graph's own outputs:
1. per layer, int8 with and without outlier migration, all other layers fp32;
2. each layer takes its better form; layers are ordered by error per multiply-accumulate,
   so the cheapest accuracy is bought first;
3. starting from all-int8, the worst layer in that order returns to fp32 until the held-back
   cosine meets the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from optimize.config import SessionConfig
from optimize.parity import similarity_scores
from optimize.quantization.emit import Decision, emit
from optimize.quantization.targets import LinearTarget
from optimize.runtimes.base import Feeds


@dataclass(frozen=True)
class Score:
    cosine_mean: float
    cosine_min: float
    agreement: float | None = None  # top-1 neighbour (features) or label (logits) agreement

    def meets(self, budget: Budget) -> bool:
        agreement_ok = self.agreement is None or self.agreement >= budget.agreement
        return self.cosine_mean >= budget.cosine_mean and self.cosine_min >= budget.cosine_min and agreement_ok

    @property
    def error(self) -> float:
        """One number to rank by: the mean cosine lost, plus a share of the worst text's."""
        return (1.0 - self.cosine_mean) + 0.25 * (1.0 - self.cosine_min)


@dataclass(frozen=True)
class Budget:
    cosine_mean: float
    cosine_min: float
    agreement: float


class Evaluator:
    """Scores candidate graphs on held-back batches against the fp32 graph's outputs."""

    def __init__(self, fp32: bytes, batches: list[Feeds], task: str, output: str, session: SessionConfig) -> None:
        self.batches, self.task, self.output, self.session = batches, task, output, session
        self.reference = self._outputs(fp32)
        self.evaluations = 0

    def _outputs(self, model_bytes: bytes) -> list[np.ndarray]:
        import onnxruntime as ort

        from optimize.runtimes.ort import session_options

        sess = ort.InferenceSession(
            model_bytes, session_options(self.session), providers=list(self.session.providers),
            disabled_optimizers=list(self.session.disabled_optimizers),
        )
        names = [i.name for i in sess.get_inputs()]
        return [sess.run([self.output], {n: b[n] for n in names})[0] for b in self.batches]

    def score(self, model: ir.Model) -> Score:
        self.evaluations += 1
        candidate = self._outputs(ir.to_proto(model).SerializeToString())
        masks = [b.get("attention_mask") for b in self.batches]
        return Score(*similarity_scores(self.reference, candidate, masks, self.task))


@dataclass
class LayerReport:
    target: LinearTarget
    alone: dict[str, Score] = field(default_factory=dict)  # variant -> score with only this layer int8
    choice: str = "fp32"  # a variant name, or fp32
    why: str = ""

    def best(self) -> tuple[str, Score] | None:
        if not self.alone:
            return None
        return min(self.alone.items(), key=lambda item: item[1].error)

    def as_dict(self) -> dict:
        return {
            "layer": self.target.label,
            "node": self.target.node,
            "macs_per_token": self.target.macs_per_token,
            "alone": {k: [round(v.cosine_mean, 6), round(v.cosine_min, 6)] for k, v in self.alone.items()},
            "choice": self.choice,
            "why": self.why,
        }


@dataclass
class Plan:
    decisions: list[Decision]
    layers: list[LayerReport]
    final: Score
    all_int8_plain: Score | None
    all_int8_chosen: Score | None
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def search(
    base: bytes,
    targets: list[LinearTarget],
    variants: dict[str, dict[str, Decision]],
    evaluator: Evaluator,
    budget: Budget,
    style: str,
    unsupported: dict[str, str],
) -> Plan:
    """Choose, per linear layer, one of its int8 variants or fp32, under the budget.

    ``variants[node]`` maps a variant name ("int8", "int8+smooth", "int8+split") to the
    decision that implements it; "int8" (plain) must be among them.
    """
    started = time.perf_counter()

    def build(decisions: list[Decision]) -> ir.Model:
        model = ir.from_proto(onnx.load_from_string(base))
        emit(model, decisions, style)
        return model

    reports = {t.node: LayerReport(t) for t in targets}
    candidates = [t for t in targets if t.node not in unsupported]
    for node, reason in unsupported.items():
        reports[node].why = reason
    for target in candidates:
        report = reports[target.node]
        for name, decision in variants[target.node].items():
            report.alone[name] = evaluator.score(build([decision]))
        best = report.best()
        assert best is not None
        report.choice = best[0]

    def chosen(target: LinearTarget) -> Decision:
        return variants[target.node][reports[target.node].choice]

    all_plain = evaluator.score(build([variants[t.node]["int8"] for t in candidates])) if candidates else None
    order = sorted(candidates, key=lambda t: reports[t.node].best()[1].error / t.macs_per_token, reverse=True)  # type: ignore[index]
    active = list(candidates)
    score = evaluator.score(build([chosen(t) for t in active])) if active else Score(1.0, 1.0)
    all_chosen = score
    for target in order:
        if score.meets(budget):
            break
        active.remove(target)
        report = reports[target.node]
        lost = 1.0 - report.alone[report.choice].cosine_mean
        report.why = (
            f"kept fp32 for the budget: alone as {report.choice} it costs {lost:.2e} mean cosine, the most per "
            "multiply-accumulate of those left"
        )
        report.choice = "fp32"
        score = evaluator.score(build([chosen(t) for t in active])) if active else Score(1.0, 1.0)
    plan = Plan(
        decisions=[chosen(t) for t in active],
        layers=[reports[t.node] for t in targets],
        final=score,
        all_int8_plain=all_plain,
        all_int8_chosen=all_chosen,
        evaluations=evaluator.evaluations,
        seconds=time.perf_counter() - started,
    )
    if not score.meets(budget):
        plan.notes.append("even with every layer in fp32 the held-back budget is not met")
    return plan
