import onnx_ir as ir
import pytest
from onnx import helper

from graphs import model, value
from optimize.errors import PassError
from optimize.passes.base import OptimizePass
from optimize.passes.pipeline import Pipeline


class CountNodes(OptimizePass):
    name = "count-nodes"

    def run(self, m: ir.Model) -> bool:
        self.stats = {"nodes": sum(1 for _ in m.graph)}
        return False


class Explode(OptimizePass):
    name = "explode"

    def run(self, m: ir.Model) -> bool:
        raise ValueError("shapes do not line up")


class Refuse(OptimizePass):
    name = "refuse"

    def run(self, m: ir.Model) -> bool:
        raise PassError("the graph has no attention to fuse", "export with --target ort-fp32")


def _graph():
    return model([helper.make_node("Relu", ["x"], ["y"])], [value("x", shape=[2])], [value("y", shape=[2])])


def test_pipeline_records_each_pass():
    report = Pipeline([CountNodes(), CountNodes()]).run(_graph())
    assert [r.name for r in report.records] == ["count-nodes", "count-nodes"]
    assert report.records[0].stats == {"nodes": 1}
    assert report.final_ops == {"Relu": 1}
    assert report.as_dict()["passes"][0]["nodes"] == [1, 1]


def test_pipeline_names_the_failing_pass_and_those_before_it():
    with pytest.raises(PassError) as caught:
        Pipeline([CountNodes(), Explode()]).run(_graph())
    message = str(caught.value)
    assert "'explode'" in message and "[count-nodes]" in message and "shapes do not line up" in message
    assert "\n" not in message
    # a library's exception wrapped on the way out: an internal failure, not a refusal
    assert caught.value.internal and isinstance(caught.value.__cause__, ValueError)


def test_a_pass_that_refuses_is_not_an_internal_failure():
    with pytest.raises(PassError) as caught:
        Pipeline([CountNodes(), Refuse()]).run(_graph())
    assert not caught.value.internal
    assert str(caught.value) == "the graph has no attention to fuse; export with --target ort-fp32"
