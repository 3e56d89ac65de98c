"""The accuracy budget: measure each layer's sensitivity, then keep as much in int8 as the budget allows.

Every number here is measured by running the candidate graph in ONNX Runtime on held-back
calibration text (never the parity text) against the fp32 graph's own outputs:
1. per layer, int8 with and without outlier migration, all other layers fp32 (on the first
   SENSITIVITY_TEXTS held-back texts: these scores only rank, so a small sample serves);
2. each layer takes its better form; layers are ordered by error per multiply-accumulate,
   so the cheapest accuracy is bought first;
3. starting from all-int8, the fewest layers at the head of that order return to fp32 for the
   held-back scores (on every held-back text) to meet the budget, found by bisection; then the
   largest of those are offered back one by one, each kept in int8 if the budget still holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from optimize.config import SessionConfig
from optimize.parity import similarity_scores
from optimize.quantization.emit import Decision, SiteDecision, emit
from optimize.quantization.targets import ActivationSite, LinearTarget

Target = LinearTarget | ActivationSite
AnyDecision = Decision | SiteDecision
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


#: at most this many fp32 layers are offered back to int8 after the bisection
GIVE_BACK_TRIES = 8

#: held-back texts the per-layer sensitivity is measured on (the budget uses them all).
SENSITIVITY_TEXTS = 48


class Evaluator:
    """Scores candidate graphs on held-back batches against the fp32 graph's outputs."""

    def __init__(self, fp32: bytes, batches: list[Feeds], task: str, output: str, session: SessionConfig) -> None:
        self.batches, self.task, self.output, self.session = batches, task, output, session
        self.reference = self._outputs(fp32, batches)
        self.quick = _leading_batches(batches, SENSITIVITY_TEXTS)
        self.evaluations = 0

    def _outputs(self, model: ir.Model | bytes, batches: list[Feeds]) -> list[dict[str, np.ndarray]]:
        from optimize.runtimes.ort import build_session

        sess = build_session(model, self.session)
        names = [i.name for i in sess.get_inputs()]
        outputs = [o.name for o in sess.get_outputs()]  # every output: a task may judge several (QA's start and end)
        return [dict(zip(outputs, sess.run(None, {n: b[n] for n in names}))) for b in batches]

    def score(self, model: ir.Model, *, quick: bool = False) -> Score:
        """Scores on every held-back text, or (``quick``) on the first SENSITIVITY_TEXTS."""
        self.evaluations += 1
        batches = self.batches[: len(self.quick)] if quick else self.batches
        candidate = self._outputs(model, batches)
        masks = [b.get("attention_mask") for b in batches]
        return Score(*similarity_scores(self.reference[: len(batches)], candidate, masks, self.task))


def _leading_batches(batches: list[Feeds], texts: int) -> list[Feeds]:
    """The shortest prefix of ``batches`` holding at least ``texts`` texts."""
    taken, count = [], 0
    for batch in batches:
        if count >= texts:
            break
        taken.append(batch)
        count += len(next(iter(batch.values())))
    return taken


@dataclass
class LayerReport:
    target: Target
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
    decisions: list[AnyDecision]
    layers: list[LayerReport]
    final: Score
    all_int8_plain: Score | None
    all_int8_chosen: Score | None
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def search(
    base: bytes,
    targets: list[Target],
    variants: dict[str, dict[str, AnyDecision]],
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

    def build(decisions: list[AnyDecision]) -> ir.Model:
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
            report.alone[name] = evaluator.score(build([decision]), quick=True)
        best = report.best()
        assert best is not None
        report.choice = best[0]

    def chosen(target: Target) -> AnyDecision:
        return variants[target.node][reports[target.node].choice]

    all_plain = evaluator.score(build([variants[t.node]["int8"] for t in candidates])) if candidates else None
    order = sorted(candidates, key=lambda t: reports[t.node].best()[1].error / t.macs_per_token, reverse=True)  # type: ignore[index]
    # Return the first k layers of that order to fp32, for the smallest k that meets the budget:
    # a bisection over k (the loss shrinks, near enough monotonically, as k grows), so a few
    # evaluations on every held-back text instead of one per layer. k = len(order) (all fp32)
    # meets it by definition.
    def with_first_fp32(k: int) -> Score:
        kept = [t for t in candidates if t not in order[:k]]
        return evaluator.score(build([chosen(t) for t in kept])) if kept else Score(1.0, 1.0)

    scores = {0: with_first_fp32(0)} if candidates else {0: Score(1.0, 1.0)}
    all_chosen = scores[0]
    low, high = 0, len(order)  # low fails (or is the answer when it meets), high meets
    if scores[0].meets(budget):
        high = 0
    while high - low > 1:
        middle = (low + high) // 2
        scores[middle] = with_first_fp32(middle)
        low, high = (low, middle) if scores[middle].meets(budget) else (middle, high)
    score = scores.get(high) or Score(1.0, 1.0)
    # The loss is only near-monotonic in k: bisection can overshoot. Give layers back, the most
    # multiply-accumulates first (the biggest speed win), keeping each return that still meets
    # the budget.
    returned: list[Target] = []
    for target in sorted(order[:high], key=lambda t: t.macs_per_token, reverse=True)[:GIVE_BACK_TRIES]:
        if target.macs_per_token <= 1:
            continue
        trial_removed = [t for t in order[:high] if t is not target and t not in returned]
        kept = [t for t in candidates if t not in trial_removed]
        trial = evaluator.score(build([chosen(t) for t in kept]))
        if trial.meets(budget):
            returned.append(target)
            score = trial
    for target in order[:high]:
        if target in returned:
            continue
        report = reports[target.node]
        lost = 1.0 - report.alone[report.choice].cosine_mean
        report.why = (
            f"kept fp32 for the budget: alone as {report.choice} it costs {lost:.2e} mean cosine, among the most per "
            "multiply-accumulate"
        )
        report.choice = "fp32"
    active = [t for t in candidates if t not in order[:high] or t in returned]
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
