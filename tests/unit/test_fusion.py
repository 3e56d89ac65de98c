"""The ORT fusion pass on a tiny real BERT graph, and its report when a fusion cannot happen."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from graphs import model, padded_encoder_feeds, run, value
from optimize.config import ExportConfig
from optimize.exporter import export, resolve
from optimize.passes.base import op_counts
from optimize.passes.fusion import OrtFusionPass


@pytest.fixture(scope="module")
def tiny_bert_graph(tiny_model_dir):
    loaded = resolve(str(tiny_model_dir("bert")))
    exported = export(loaded, ExportConfig(dynamic_probe_shapes=((1, 4),)))
    return ir.to_proto(exported.model).SerializeToString()


def test_fuses_attention_and_bias_gelu_without_changing_outputs(tiny_bert_graph):
    import onnx

    m = ir.from_proto(onnx.load_from_string(tiny_bert_graph))
    (before,) = run(m, padded_encoder_feeds())
    fusion = OrtFusionPass(expected={"attention": 2, "bias_gelu": 2})
    fusion(m)
    ops = op_counts(m)
    assert ops["com.microsoft::Attention"] == 2
    assert ops["com.microsoft::BiasGelu"] == 2
    # SkipLayerNormalization stays unfused on purpose (slower on ORT's CPU kernel)
    assert "com.microsoft::SkipLayerNormalization" not in ops
    assert fusion.stats["missing"] == {}
    (after,) = run(m, padded_encoder_feeds())
    valid = padded_encoder_feeds()["attention_mask"][..., None]
    np.testing.assert_allclose(after * valid, before * valid, atol=1e-5)


def test_skip_layer_norm_fusion_can_be_enabled(tiny_bert_graph):
    import onnx

    m = ir.from_proto(onnx.load_from_string(tiny_bert_graph))
    OrtFusionPass(disabled=frozenset())(m)
    assert op_counts(m)["com.microsoft::SkipLayerNormalization"] == 4


def test_expected_fusion_that_cannot_happen_is_reported_with_a_reason():
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [value("x", shape=[1, 4, 8])],
        [value("y", shape=[1, 4, 8])],
        [helper.make_tensor("w", 1, [8, 8], np.eye(8, dtype=np.float32).ravel().tolist())],
    )
    fusion = OrtFusionPass(expected={"attention": 1})
    fusion(m)
    assert "attention" in fusion.stats["missing"]
    reason = fusion.stats["missing"]["attention"]
    assert reason.startswith("0 of 1: ") and len(reason) > len("0 of 1: ")
