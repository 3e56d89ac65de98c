"""ONNX Runtime transformer fusions through onnxscript's rewriter (``ort_fusions``).

Attention, BiasGelu, SkipLayerNormalization and friends as pattern/check/rewrite rules.
The graph afterwards holds com.microsoft contrib ops, so this pass is for ONNX Runtime
targets only: TensorRT's ONNX parser does not know them.

SkipLayerNormalization is off by default for CPU targets, by measurement: in ONNX Runtime
1.32 on an AVX2 machine, its CPU kernel at [1, 128, 384] takes 300 us on one thread where
Add + LayerNormalization take 52 us; end to end on the embedded BERT the unfused graph is
about 4% faster. ``disabled_ort_optimizers`` tells the session not to re-fuse it.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir
import onnx_ir.passes.common as common

from optimize.passes.base import OptimizePass, op_counts

#: ORT's own optimizer would rebuild what we deliberately left unfused.
ORT_OPTIMIZERS_UNDOING_CPU_CHOICES = ("SkipLayerNormFusion",)

#: an expected fusion (optimize/architectures.py) -> the com.microsoft op it leaves in the graph,
#: and the onnxscript fusion whose matching tracer says why, when it did not happen
EXPECTED_OPS = {
    "attention": ("Attention", "attention"),
    "mha": ("MultiHeadAttention", "sdpa"),
    "bias_gelu": ("BiasGelu", "bias_gelu"),
    "gelu": ("Gelu", "gelu"),
}


@dataclass(frozen=True)
class Fusion:
    name: str
    apply: Callable[..., int]
    shape_inference: bool = False


def _fusions() -> list[Fusion]:
    """onnxscript's fusions, in the order its ``fuse_xformers`` applies them."""
    from onnxscript.rewriter.ort_fusions import attention, bias_gelu, erfgelu, gelu, mha, mha_bias, mha_scale, sdpa, sdpa_via_mha
    from onnxscript.rewriter.ort_fusions import skip_normalization

    return [
        Fusion("erf_gelu", erfgelu.fuse_erfgelu),
        Fusion("skip_layer_normalization", skip_normalization.fuse_skip_layer_normalization),
        Fusion("sdpa", sdpa.fuse_sdpa, shape_inference=True),
        Fusion("mha1", mha.fuse_mha1),
        Fusion("mha2", mha.fuse_mha2),
        Fusion("mha_scale", mha_scale.fuse_mha_scale),
        Fusion("mha_bias", mha_bias.fuse_mha_bias),
        Fusion("attention", attention.fuse_attention),
        Fusion("gelu", gelu.fuse_gelu),
        Fusion("bias_gelu", bias_gelu.fuse_bias_gelu),
        # an SDPA the MHA rules could not take (a layer pruned to one head) becomes a plain
        # MultiHeadAttention; left alone, ORT fails on the unlowered _fusion:SDPA function
        Fusion("sdpa_via_mha", sdpa_via_mha.replace_sdpa_by_mha),
    ]


def _pre_optimize(model: ir.Model) -> None:
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import shape_optimization
    from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    common.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)


def _failure_reason(fusion: Fusion, model: ir.Model) -> str:
    """Ask the rewriter's matching tracer why a fusion found nothing; one line."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        try:
            fusion.apply(model, debug=True)
        except Exception as exc:  # noqa: BLE001
            return f"tracer failed: {exc.__class__.__name__}"
    text = captured.getvalue()
    match = re.search(r"Graph matching failed(?: due to failing check condition)?\s*:?\s*(.*)", text)
    if match and match.group(1).strip():
        return " ".join(match.group(1).split())[:200]
    if "No matches found" in text:
        return "no node of the graph starts this pattern"
    return "pattern did not match (no reason given by the rewriter)"


class OrtFusionPass(OptimizePass):
    """Apply onnxscript's ORT fusions; report expected fusions that did not happen, with why."""

    name = "ort-fusion"

    def __init__(
        self,
        expected: dict[str, int] | None = None,
        disabled: frozenset[str] = frozenset({"skip_layer_normalization"}),
        rules: tuple[str, ...] = (),
        known_unfused: dict[str, str] | None = None,
    ) -> None:
        """``expected``: fusions (EXPECTED_OPS) the graph must reach, with counts; ``rules``:
        the family's own rewrite rules (passes/family_rules.py), applied before the fusions;
        ``known_unfused``: what the family's description says will not fuse, and why."""
        super().__init__()
        self.expected = dict(expected or {})
        self.disabled = disabled
        self.rules = rules
        self.known_unfused = dict(known_unfused or {})

    def run(self, model: ir.Model) -> bool:
        from onnxscript.optimizer import optimize
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.ort_fusions._core import ORT_PATTERN_REWRITE_RULES

        from optimize.passes import family_rules

        _pre_optimize(model)
        prepared = family_rules.apply(model, self.rules)
        counts: dict[str, int] = {}
        for fusion in _fusions():
            if fusion.name in self.disabled:
                continue
            if fusion.name in ("mha_bias", "attention") and counts.get("mha1", 0) + counts.get("mha2", 0) == 0:
                counts[fusion.name] = 0  # both build on a fused MultiHeadAttention
                continue
            kwargs = {"apply_shape_inference": True} if fusion.shape_inference else {}
            counts[fusion.name] = int(fusion.apply(model, **kwargs))
        optimize(model)
        rewrite(model, ORT_PATTERN_REWRITE_RULES)
        common.ShapeInferencePass()(model)

        fused = {key.split("::", 1)[1]: n for key, n in op_counts(model).items() if key.startswith("com.microsoft::")}
        missing: dict[str, str] = {}
        for name, want in self.expected.items():
            op, rule = EXPECTED_OPS[name]
            got = fused.get(op, 0)
            if got < want:
                fusion = next(f for f in _fusions() if f.name == rule)
                missing[name] = f"{got} of {want}: {_failure_reason(fusion, model)}"
        self.stats = {
            "fusions": {k: v for k, v in counts.items() if v},
            "fused_ops": fused,
            "family_rules": prepared,
            "missing": missing,
            "not_fused": self.known_unfused,
        }
        return any(counts.values())


def fusion_line(stats: dict) -> str:
    """What fused and what did not, and why: one line for the export's output."""
    fused = ", ".join(f"{op} x{n}" for op, n in sorted(stats.get("fused_ops", {}).items())) or "nothing"
    gaps = [f"{name} ({why})" for name, why in {**stats.get("not_fused", {}), **stats.get("missing", {})}.items()]
    return f"fused: {fused}" + (f"; not fused: {'; '.join(gaps)}" if gaps else "")
