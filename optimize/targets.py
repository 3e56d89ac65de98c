"""The target registry: a target name -> the passes it runs, its runtime and its tolerances.

Adding a target means adding one entry here; adding a pass to a target means editing its
``passes`` function.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from optimize.config import ExportJob, SessionConfig, Tolerances
from optimize.errors import InputError
from optimize.exporter.resolve import LoadedModel
from optimize.passes.base import OptimizePass
from optimize.quantization.qat import Int8Scheme


@dataclass(frozen=True)
class PassContext:
    """What a target needs to choose and configure its passes."""

    loaded: LoadedModel
    job: ExportJob
    #: the int8 plan --qat trained under, with its learned ranges, keyed by each layer's weights (qat.weight_key)
    qat_schemes: dict | None = None


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    runtime: str  # "onnxruntime" | "tensorrt"
    precision: str
    passes: Callable[[PassContext], list[OptimizePass]]
    tolerances: Callable[[str, ExportJob], Tolerances]
    session: SessionConfig = field(default_factory=SessionConfig)
    #: checks the job before any model is loaded (cheap refusals first).
    preflight: Callable[[ExportJob], None] | None = None
    #: int8 targets: the arithmetic their int8 pass emits (what --qat trains under)
    int8: Int8Scheme | None = None

    def availability(self) -> str | None:
        """None if this machine can produce the whole target, else a one-line reason."""
        if self.runtime == "tensorrt":
            from optimize.runtimes.tensorrt import unavailable

            reason = unavailable()
            if reason:
                return f"graph only: {reason}; engine is built on the GPU by `optimize build`"
        return None


def expected_fusions(loaded: LoadedModel) -> dict[str, int]:
    """Fusions the ORT pass must reach: what the model's architecture description promises per
    layer (optimize/architectures.py; tests/integration prove each); none on the generic path."""
    return loaded.family.expected_fusions(loaded.module.config, loaded.num_layers)


def _fusion_pass(ctx: PassContext) -> OptimizePass:
    from optimize.passes.fusion import OrtFusionPass

    family = ctx.loaded.family
    return OrtFusionPass(expected=expected_fusions(ctx.loaded), rules=family.rules, known_unfused=family.unfused)


def _ort_fp32_passes(ctx: PassContext) -> list[OptimizePass]:
    from optimize.passes.attention_mask import AttentionMaskIndexPass
    from optimize.passes.cleanup import CleanupPass
    from optimize.passes.residual_bias import ResidualBiasFoldPass
    from optimize.passes.unpad import UnpadPass

    # The mask-index pass drops the exporter's ~20-node attention-bias subgraph: bit-identical
    # outputs, about 0.3 ms (1%) of the 24 ms at batch 1, sequence 128 by profile. The
    # residual-bias fold removes one bias Add per block (12 in the embedded BERT); it runs
    # for fp32 only: in the int8 and fp16 graphs it would shift calibrated ranges, unmeasured.
    return [
        CleanupPass(),
        _fusion_pass(ctx),
        CleanupPass(),
        AttentionMaskIndexPass(),
        ResidualBiasFoldPass(),
        UnpadPass(attention=ctx.job.export.packed_attention),  # after the fold, which looks for LayerNorm -> Attention on the padded layout
    ]


def _ort_int8_passes(ctx: PassContext) -> list[OptimizePass]:
    from optimize.calibration.source import CalibrationSource
    from optimize.passes.attention_mask import AttentionMaskIndexPass
    from optimize.passes.cleanup import CleanupPass
    from optimize.passes.embedding_int8 import EmbeddingInt8Pass
    from optimize.passes.int8 import Int8Pass
    from optimize.passes.unpad import UnpadPass
    from optimize.passes.weight_storage_int8 import WeightStorageInt8Pass

    source = CalibrationSource(ctx.loaded.tokenizer, ctx.loaded.input_names, ctx.job.calibration)
    return [
        CleanupPass(),
        _fusion_pass(ctx),
        CleanupPass(),
        AttentionMaskIndexPass(),
        Int8Pass(
            ctx.job.quant, source, task=ctx.loaded.task, output=ctx.loaded.output_name, style="ort", session=_ORT_CPU_SESSION,
            fixed=ctx.qat_schemes,
        ),
        EmbeddingInt8Pass(),
        CleanupPass(),
        UnpadPass(attention=ctx.job.export.packed_attention),
        WeightStorageInt8Pass(),  # last: cleanup's folding would turn it back into fp32
    ]


def _ort_fp16_passes(ctx: PassContext) -> list[OptimizePass]:
    from optimize.calibration.source import CalibrationSource
    from optimize.passes.attention_mask import AttentionMaskIndexPass
    from optimize.passes.cleanup import CleanupPass
    from optimize.passes.fp16 import Fp16Pass
    from optimize.passes.unpad import UnpadPass

    source = CalibrationSource(ctx.loaded.tokenizer, ctx.loaded.input_names, ctx.job.calibration)
    return [
        CleanupPass(),
        _fusion_pass(ctx),
        CleanupPass(),
        AttentionMaskIndexPass(),
        Fp16Pass(
            source,
            keep_normalization_fp32=ctx.job.half.keep_normalization_fp32,
            low_precision=_half_dtype(ctx.job),
            session=_ORT_CPU_SESSION,
        ),
        CleanupPass(),
        UnpadPass(attention=ctx.job.export.packed_attention),
    ]


def _half_dtype(job: ExportJob):  # -> ir.DataType
    import onnx_ir as ir

    return ir.DataType.BFLOAT16 if job.half.dtype == "bfloat16" else ir.DataType.FLOAT16


def _ort_half_preflight(job: ExportJob) -> None:
    """bf16 only where this ONNX Runtime has bf16 kernels: refuse before minutes of work."""
    from optimize.passes.fp16 import runtime_supports

    if job.half.dtype not in ("float16", "bfloat16"):
        raise InputError(f"unknown half precision {job.half.dtype!r}", "choose float16 or bfloat16")
    if job.half.dtype == "bfloat16":
        reason = runtime_supports(_half_dtype(job), job.session.providers)
        if reason:
            raise InputError(
                f"bfloat16 is not supported by ONNX Runtime on {', '.join(job.session.providers)} here ({reason})",
                "use the default --half float16, or export where the runtime has bf16 kernels (CUDA on Ampere or newer)",
            )


def _trt_fp16_passes(ctx: PassContext) -> list[OptimizePass]:
    from optimize.calibration.source import CalibrationSource
    from optimize.passes.cleanup import CleanupPass
    from optimize.passes.fp16 import Fp16Pass
    from optimize.passes.mask_fill import MaskFillPass
    from optimize.passes.trt_ready import TrtReadinessPass

    source = CalibrationSource(ctx.loaded.tokenizer, ctx.loaded.input_names, ctx.job.calibration)
    return [
        CleanupPass(),
        MaskFillPass(),
        Fp16Pass(source, keep_normalization_fp32=ctx.job.half.keep_normalization_fp32, low_precision=_half_dtype(ctx.job)),
        CleanupPass(),
        TrtReadinessPass(),
    ]


def _trt_int8_passes(ctx: PassContext) -> list[OptimizePass]:
    import dataclasses

    from optimize.calibration.source import CalibrationSource
    from optimize.passes.cleanup import CleanupPass
    from optimize.passes.int8 import Int8Pass
    from optimize.passes.mask_fill import MaskFillPass
    from optimize.passes.trt_ready import TrtReadinessPass

    source = CalibrationSource(ctx.loaded.tokenizer, ctx.loaded.input_names, ctx.job.calibration)
    quant = dataclasses.replace(ctx.job.quant, symmetric_activations=True)  # TensorRT: int8, zero point 0
    return [
        CleanupPass(),
        MaskFillPass(),
        Int8Pass(quant, source, task=ctx.loaded.task, output=ctx.loaded.output_name, style="qdq", sites=True, fixed=ctx.qat_schemes),
        CleanupPass(),
        TrtReadinessPass(),
    ]


def _classifier(task: str) -> bool:
    from optimize.tasks import get_task

    return get_task(task).classifier


def _fp16_tolerances(task: str, job: ExportJob) -> Tolerances:
    if _classifier(task):
        return Tolerances(cosine_mean=0.9999, cosine_min=0.999, label_agreement=0.99)
    return Tolerances(cosine_mean=0.9999, cosine_min=0.9995, neighbour_agreement=0.99)


def _int8_tolerances(task: str, job: ExportJob) -> Tolerances:
    """The budget the user set (--min-cosine), checked on held-out text."""
    if _classifier(task):
        return Tolerances(
            cosine_mean=job.quant.min_cosine, cosine_min=job.quant.min_cosine_floor, label_agreement=job.quant.min_agreement
        )
    return Tolerances(
        cosine_mean=job.quant.min_cosine, cosine_min=job.quant.min_cosine_floor, neighbour_agreement=job.quant.min_agreement
    )


def _fp32_tolerances(task: str, job: ExportJob) -> Tolerances:
    if _classifier(task):
        return Tolerances(cosine_mean=0.99999, cosine_min=0.9999, label_agreement=1.0, max_abs_error=1e-3)
    return Tolerances(cosine_mean=0.99999, cosine_min=0.99999, neighbour_agreement=0.99)


_ORT_CPU_SESSION = SessionConfig(disabled_optimizers=("SkipLayerNormFusion",))

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="ort-fp32",
            summary="ONNX Runtime, fp32, transformer fusions (Attention, BiasGelu)",
            runtime="onnxruntime",
            precision="fp32",
            passes=_ort_fp32_passes,
            tolerances=_fp32_tolerances,
            session=_ORT_CPU_SESSION,
        ),
        Target(
            name="ort-int8",
            summary="ONNX Runtime, static INT8: calibrated, outliers migrated, fp32 where the budget needs it",
            runtime="onnxruntime",
            precision="int8",
            passes=_ort_int8_passes,
            tolerances=_int8_tolerances,
            session=_ORT_CPU_SESSION,
            int8=Int8Scheme(symmetric_activations=False, int8_embeddings=True),
        ),
        Target(
            name="ort-fp16",
            summary="ONNX Runtime, fp16 weights and compute; fp32 where measured ranges would overflow, and norms",
            runtime="onnxruntime",
            precision="fp16",
            passes=_ort_fp16_passes,
            tolerances=_fp16_tolerances,
            session=_ORT_CPU_SESSION,
            preflight=_ort_half_preflight,
        ),
        Target(
            name="trt-fp16",
            summary="TensorRT-ready fp16 graph (standard ops, norms fp32); engine built on the GPU by `optimize build`",
            runtime="tensorrt",
            precision="fp16",
            passes=_trt_fp16_passes,
            tolerances=_fp16_tolerances,
            preflight=_ort_half_preflight,
        ),
        Target(
            name="trt-int8",
            summary="TensorRT-ready explicit symmetric int8 Q/DQ graph, same budget search; engine by `optimize build`",
            runtime="tensorrt",
            precision="int8",
            passes=_trt_int8_passes,
            tolerances=_int8_tolerances,
            int8=Int8Scheme(symmetric_activations=True, int8_embeddings=False),
        ),
    )
}


def get_target(name: str) -> Target:
    """The named target, or an InputError that suggests the nearest name."""
    if name in TARGETS:
        return TARGETS[name]
    nearest = difflib.get_close_matches(name, list(TARGETS), n=1, cutoff=0.4)
    hint = f"did you mean {nearest[0]}?" if nearest else "run `optimize targets` for the list"
    raise InputError(f"unknown target {name!r}", f"{hint} (targets: {', '.join(TARGETS)})")
