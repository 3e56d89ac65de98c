"""The budget search on a small graph, scored by a known function of which layers are int8.

The scorer stands in for running held-back text: each int8 layer costs a fixed, known
amount of cosine, so the right answer is computable by hand.
"""

import numpy as np
import onnx_ir as ir

from optimize.calibration.ranges import quant_params
from optimize.quantization.emit import Decision
from optimize.quantization.search import Budget, Evaluator, Score, search
from optimize.quantization.targets import find_targets
from test_emit import ffn  # noqa: E402

COST = {"int8": 0.004, "int8+split": 0.001}  # cosine lost per int8 layer, by variant


class KnownCosts(Evaluator):
    def __init__(self):  # no held-back text: scores come from the graph itself
        self.evaluations = 0

    def score(self, model: ir.Model, *, quick: bool = False) -> Score:
        self.evaluations += 1
        lost = 0.0
        for node in model.graph:
            if node.op_type == "MatMulIntegerToFloat":
                split = any(n.op_type == "Gather" and n.name.startswith(node.name.removesuffix("_int8")) for n in model.graph)
                lost += COST["int8+split"] if split else COST["int8"]
        return Score(1.0 - lost, 1.0 - 2 * lost)


def _setup():
    m = ffn()
    targets = find_targets(m)
    params = quant_params(-3.0, 3.0, False)
    variants = {
        t.node: {"int8": Decision(t, params), "int8+split": Decision(t, params, outliers=np.array([0]))} for t in targets
    }
    return ir.to_proto(m).SerializeToString(), targets, variants


def test_every_layer_takes_its_best_variant_when_the_budget_allows():
    base, targets, variants = _setup()
    plan = search(base, targets, variants, KnownCosts(), Budget(0.99, 0.98, 0.0), "ort", {})
    assert [r.choice for r in plan.layers] == ["int8+split", "int8+split"]
    assert plan.final.cosine_mean == 1.0 - 2 * COST["int8+split"]


def test_layers_return_to_fp32_until_the_budget_is_met():
    base, targets, variants = _setup()
    plan = search(base, targets, variants, KnownCosts(), Budget(0.9985, 0.997, 0.0), "ort", {})
    choices = [r.choice for r in plan.layers]
    assert choices.count("fp32") == 1 and choices.count("int8+split") == 1
    assert plan.final.meets(Budget(0.9985, 0.997, 0.0))
    kept = next(r for r in plan.layers if r.choice == "fp32")
    assert kept.why.startswith("kept fp32 for the budget")


def test_unsupported_layers_stay_fp32_with_their_reason():
    base, targets, variants = _setup()
    plan = search(base, targets, variants, KnownCosts(), Budget(0.9, 0.9, 0.0), "ort", {targets[0].node: "no kernel"})
    assert plan.layers[0].choice == "fp32" and plan.layers[0].why == "no kernel"
    assert len(plan.decisions) == 1
