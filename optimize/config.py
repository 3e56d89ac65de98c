"""Frozen configuration objects: the only way options travel through the library.

The CLI parses flags into these; every phase takes the one it needs. Nothing is a loose
dict of string keys, and each option is defined once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from optimize.tasks import TASKS as _TASKS

TASKS = tuple(_TASKS)  # the task names; each task's outputs and parity measure are in optimize/tasks.py

#: opsets the exporter and ONNX Runtime 1.20+ both handle well.
SUPPORTED_OPSETS = range(17, 22)


@dataclass(frozen=True)
class ExportConfig:
    """How a PyTorch model becomes an ONNX graph."""

    task: str = "feature-extraction"
    opset: int = 18
    #: longest sequence the artifact is validated, calibrated and benchmarked at.
    seq_len: int = 128
    #: shapes (batch, sequence) at which the exported graph is run to prove the axes dynamic.
    dynamic_probe_shapes: tuple[tuple[int, int], ...] = ((1, 8), (3, 17), (2, 64))
    #: torch.export first, TorchScript second: the order capture strategies are tried in.
    strategies: tuple[str, ...] = ("dynamo", "torchscript")
    #: put the tokenizer in front of the model (input: a string tensor ``text`` [batch]); ort-* targets
    with_tokenizer: bool = False
    #: ort-* targets: attention's Q/K/V projection and the attention itself on real tokens only,
    #: one sequence at a time on ONNX Runtime's mask-free flash kernel (passes/unpad_attention.py).
    #: False keeps ORT's fused Attention on the padded layout (about as fast one text at a time,
    #: much slower in batches of real sentences).
    packed_attention: bool = True


@dataclass(frozen=True)
class SessionConfig:
    """How an ONNX Runtime session is built."""

    threads: int = 0  # 0: one per physical core
    optimization_level: str = "all"  # disable | basic | extended | all
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: ORT graph optimizers to switch off; see passes/fusion.py for why SkipLayerNorm is here.
    disabled_optimizers: tuple[str, ...] = ()
    #: custom-op libraries the graph needs: "onnxruntime-extensions" for a raw-text graph (--with-tokenizer)
    custom_ops: tuple[str, ...] = ()
    #: on an x86 CPU without VNNI or AMX, hand int8 weights to ORT as uint8 + 128, whose kernel is
    #: exact where the uint8 x int8 one saturates (runtimes/int8_exact.py); False: as stored
    exact_int8: bool = True


@dataclass(frozen=True)
class Tolerances:
    """What the artifact must achieve against the PyTorch fp32 reference on held-out text."""

    cosine_mean: float = 0.99999
    cosine_min: float = 0.99999
    neighbour_agreement: float = 1.0
    #: for text-classification: fraction of argmax labels that must agree.
    label_agreement: float = 1.0
    #: absolute error bound on outputs; None: not enforced (reported only).
    max_abs_error: float | None = None

    def scaled(self, **changes: float) -> Tolerances:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration text comes from and how much of it is used."""

    path: Path | None = None  # None: the built-in corpus of four domains (calibration/corpus.py)
    size: int = 512  # sentences
    #: the column of texts where ``path`` (or --parity-text, --eval-data) is a CSV, TSV or JSON-lines file
    text_column: str = "text"
    batch_size: int = 16
    seq_len: int = 128


@dataclass(frozen=True)
class ParityConfig:
    """The held-out text used to compare artifact and reference."""

    #: None: the held-out fifth of the --calibration file, or of the built-in calibration domains
    path: Path | None = None
    #: neighbour agreement is a coarse statistic: a few hundred texts keep one flip from deciding it.
    size: int = 256
    #: texts of the domain no calibration source holds (movie reviews, 600 shipped); 0: not measured
    unseen_size: int = 600
    batch_size: int = 16
    seq_len: int = 128


@dataclass(frozen=True)
class EvaluationConfig:
    """The accuracy gate on export (``--eval-data``): labelled rows the artifact must not lose
    more than ``max_accuracy_drop`` points on, against its source model."""

    path: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_accuracy_drop: float = 1.0  # accuracy points (percent)

    @property
    def enabled(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class SpeedCheckConfig:
    """The quick side-by-side speed line printed by ``export``."""

    enabled: bool = True
    batch: int = 1
    seq_len: int = 128
    threads: int = 2
    #: 15 rounds (~12 s at batch 1, sequence 128): with 7 the median moved by +-5% between
    #: runs on a shared 2-core machine; `optimize bench --rounds 61` is the figure to quote.
    rounds: int = 15
    block_runs: int = 12
    dropped_per_block: int = 3


@dataclass(frozen=True)
class QuantConfig:
    """Static INT8 quantization options."""

    method: str = "minmax"  # minmax | percentile | entropy
    symmetric_activations: bool = False  # int8 zero-point-0 activations (TensorRT) instead of uint8
    #: the accuracy budget: mean and minimum cosine against fp32 the artifact must keep.
    min_cosine: float = 0.99
    min_cosine_floor: float = 0.97
    #: top-1 neighbour agreement (features) or label agreement (classifiers) to keep.
    min_agreement: float = 0.95
    #: SmoothQuant migration strength; None: no outlier migration.
    smooth_alpha: float | None = 0.5
    #: a layer listed here by label (L0.ffn_out) or node name stays fp32.
    keep_fp32: tuple[str, ...] = ()
    #: quantization-aware distillation steps before export (0: post-training int8 only)
    qat_steps: int = 0


@dataclass(frozen=True)
class HalfConfig:
    """Half-precision options for the fp16 targets."""

    dtype: str = "float16"  # float16 | bfloat16
    keep_normalization_fp32: bool = True


@dataclass(frozen=True)
class ShapeRange:
    """An optimization-profile dimension: the smallest, the tuned-for and the largest value."""

    minimum: int
    optimum: int
    maximum: int

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.minimum}, {self.optimum}, {self.maximum}")

    def as_list(self) -> list[int]:
        return [self.minimum, self.optimum, self.maximum]


@dataclass(frozen=True)
class EngineConfig:
    """How a TensorRT engine is built on the device (``optimize build``)."""

    batch: ShapeRange = ShapeRange(1, 1, 32)
    sequence: ShapeRange = ShapeRange(1, 128, 128)
    workspace_mib: int = 4096


@dataclass(frozen=True)
class EngineOverrides:
    """``optimize build``'s flags: each one given replaces only its own part of the recorded
    engine settings (None: keep what the bundle's manifest records)."""

    batch: ShapeRange | None = None
    sequence: ShapeRange | None = None
    workspace_mib: int | None = None

    def applied_to(self, recorded: EngineConfig) -> EngineConfig:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(recorded, **changes)


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning before export (``--prune``); fraction 0 means none."""

    fraction: float = 0.0
    #: "both" (heads and FFN neurons ranked together), "heads" or "ffn"
    what: str = "both"
    #: whole encoder layers removed first, the ones the model misses least (``--drop-layers``)
    drop_layers: int = 0
    reconstruct: bool = True
    #: calibration texts the scores and the least-squares fits are measured on. The fit over-fits
    #: few texts and its domain: on pydoc alone (3,151 texts) held-out cosine at 30% read 0.9728
    #: but 0.90 on other prose; on the four-domain corpus, unseen-domain (movie reviews) cosine
    #: after the fit 0.9214 with 4,096 texts, 0.9272 with 8,192 (about 6 minutes on 2 cores).
    #: Fewer is faster (a tiny model's tests take a few hundred).
    fit_texts: int = 8192
    recover_steps: int = 0
    #: parity is always against the unpruned PyTorch model; pruning itself changes what the model
    #: computes, so each tolerance is the looser of the target's and these
    min_cosine: float = 0.95
    min_agreement: float = 0.80  # top-1 neighbour agreement (features)
    min_label_agreement: float = 0.90  # label agreement (classifiers; --eval-data judges the task itself)

    @property
    def min_cosine_floor(self) -> float:
        """The worst text may lose 0.2 more than the mean (0.75 at the default 0.95)."""
        return max(0.0, self.min_cosine - 0.2)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"prune fraction must be in [0, 1), got {self.fraction}")
        if self.what not in ("both", "heads", "ffn"):
            raise ValueError(f"prune what must be both, heads or ffn, got {self.what!r}")
        if self.fit_texts < 1:
            raise ValueError(f"prune fit_texts must be at least 1, got {self.fit_texts}")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0.0 or self.drop_layers > 0


@dataclass(frozen=True)
class TrainingConfig:
    """Where ``--recover`` and ``--qat`` train (optimize/training.py)."""

    #: auto (the first CUDA device PyTorch sees, else the CPU), cpu, cuda or cuda:N
    device: str = "auto"


@dataclass(frozen=True)
class ExportJob:
    """Everything ``optimize export`` needs, gathered by the CLI or the Python API."""

    model: str
    target: str
    output: Path
    force: bool = False
    export: ExportConfig = field(default_factory=ExportConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    speed: SpeedCheckConfig = field(default_factory=SpeedCheckConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    half: HalfConfig = field(default_factory=HalfConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0


@dataclass(frozen=True)
class BenchConfig:
    """What ``optimize bench`` measures and how."""

    batches: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (128,)
    threads: int = 0  # 0: one per physical core
    baselines: tuple[str, ...] = ("torch",)
    real_length: bool = False
    real_length_texts: int = 256
    rounds: int = 7
    block_runs: int = 12
    dropped_per_block: int = 3
