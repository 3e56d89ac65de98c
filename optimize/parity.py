"""Does the artifact compute what the PyTorch model computes? Measured on held-out real text.

Each task names its measure (optimize/tasks.py); every measure gives one cosine per text, an
agreement and the max abs error:
- pooled (feature extraction): cosine of mean-pooled token embeddings, top-1 nearest-neighbour
  agreement among the texts, max abs error over real (unpadded) tokens;
- embedding (sentence embedding): cosine of the sentence embeddings themselves, neighbour
  agreement, max abs error of the embeddings;
- classes (text classification): cosine of the class-probability vectors (softmax of the
  logits: the cosine of raw logits is meaningless when both logits of a two-class head sit near
  zero, where it can swing to -1 while the decision and probabilities barely move), label
  agreement, max abs error of the logits;
- token-classes (token classification): per text, cosine of its real tokens' class
  probabilities taken together; label agreement per real token; max abs logit error on them;
- span (question answering): per text, cosine of the start and end distributions (softmax over
  the real tokens) taken together; agreement of the argmax start and end; max abs logit error.
Neighbour agreement counts a text's nearest neighbour under the artifact as agreeing when the
reference model rates it within NEIGHBOUR_TIE of the reference's own nearest: in a dense domain
many texts have two neighbours the reference itself can barely tell apart (on 600 movie reviews,
30% of texts have their two nearest within 0.01 cosine), and swapping those says nothing about
the artifact. The exact figure (the very same neighbour) is reported beside it. Label agreement
is tie-aware the same way: the artifact's label counts as agreeing when the reference gives it a
probability within LABEL_TIE of its own top label's (a two-class head at 0.501 / 0.499, or a
question-answering head spread evenly over a passage, is a coin flip for the reference too); the
exact figure is reported beside it.
Non-finite outputs are counted and always fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from optimize.config import Tolerances
from optimize.runtimes.base import Feeds, Runner
from optimize.tasks import Task, get_task


@dataclass(frozen=True)
class ParityReport:
    task: str
    samples: int
    cosine_mean: float
    cosine_min: float
    neighbour_agreement: float | None
    label_agreement: float | None
    max_abs_error: float
    nonfinite: int
    tolerances: Tolerances
    failures: tuple[str, ...] = field(default=())
    #: what the texts were, for the report ("held-out text of the calibration domains (...)")
    texts: str = "held out"
    #: the share of texts whose nearest neighbour is the very same one (no tie allowance)
    neighbour_agreement_exact: float | None = None
    #: the share of decisions on the very same label (no tie allowance)
    label_agreement_exact: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        parts = [f"cosine mean {self.cosine_mean:.6f} min {self.cosine_min:.6f}"]
        if self.neighbour_agreement is not None:
            exact = f" ({self.neighbour_agreement_exact:.3f} exact)" if self.neighbour_agreement_exact is not None else ""
            parts.append(f"top-1 neighbour agreement {self.neighbour_agreement:.3f}{exact}")
        if self.label_agreement is not None:
            exact = f" ({self.label_agreement_exact:.4f} exact)" if self.label_agreement_exact is not None else ""
            parts.append(f"label agreement {self.label_agreement:.4f}{exact}")
        parts.append(f"max abs error {self.max_abs_error:.2e}")
        return f"{', '.join(parts)} over {self.samples} texts ({self.texts})"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["failures"] = list(self.failures)
        return data


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average of token vectors over real tokens, in float64 (as sentence-transformers pools)."""
    weights = mask.astype(np.float64)[..., None]
    return (hidden.astype(np.float64) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


@dataclass
class _Batch:
    """One batch compared: per-text cosines, agreement decisions, vectors for neighbours."""

    cosines: np.ndarray
    agreements: np.ndarray  # booleans, tie-aware: per text, or per real token
    max_abs_error: float
    want_vectors: np.ndarray | None = None  # for the neighbour agreement across all texts
    got_vectors: np.ndarray | None = None
    exact_agreements: np.ndarray | None = None  # booleans: the very same label


#: probability within which the reference's own top two labels count as a tie
LABEL_TIE = 0.005


def label_agreement(want_logits: np.ndarray, got_logits: np.ndarray, real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tie-aware, exact) agreement of the argmax over the last axis; ``real`` masks positions
    out of the choice (question answering picks among the real tokens only)."""
    if real is not None:
        want_logits = np.where(real, want_logits, -np.inf)
        got_logits = np.where(real, got_logits, -np.inf)
    reference = softmax(want_logits)
    wanted, picked = reference.argmax(-1), got_logits.argmax(-1)
    top = np.take_along_axis(reference, wanted[..., None], -1)[..., 0]
    at_pick = np.take_along_axis(reference, picked[..., None], -1)[..., 0]
    return at_pick >= top - LABEL_TIE, wanted == picked


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-30)


#: cosine within which the reference's own two nearest neighbours count as a tie
NEIGHBOUR_TIE = 0.005


def neighbour_agreement(want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(tie-aware, exact) top-1 nearest-neighbour agreement of two sets of pooled embeddings."""
    unit = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-30)
    reference = unit @ unit.T
    np.fill_diagonal(reference, -np.inf)
    rows = np.arange(len(want))
    wanted, picked = reference.argmax(axis=1), _nearest_neighbours(got)
    tie_aware = reference[rows, picked] >= reference[rows, wanted] - NEIGHBOUR_TIE
    return float(tie_aware.mean()), float(np.mean(wanted == picked))


def _nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-30)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def _abs_error(want: np.ndarray, got: np.ndarray, real: np.ndarray | None = None) -> float:
    difference = np.abs(got - want)
    if real is not None:
        difference = difference * real.reshape(real.shape + (1,) * (difference.ndim - real.ndim))
    return float(difference.max(initial=0.0))


def _pooled(want: dict, got: dict, mask: np.ndarray, name: str) -> _Batch:
    w, g = mean_pool(want[name], mask), mean_pool(got[name], mask)
    return _Batch(_cosines(w, g), np.zeros(0, bool), _abs_error(want[name], got[name], mask), w, g)


def _embedding(want: dict, got: dict, mask: np.ndarray, name: str) -> _Batch:
    w, g = want[name], got[name]
    return _Batch(_cosines(w, g), np.zeros(0, bool), _abs_error(w, g), w, g)


def _classes(want: dict, got: dict, mask: np.ndarray, name: str) -> _Batch:
    w, g = want[name], got[name]
    tie_aware, exact = label_agreement(w, g)
    return _Batch(_cosines(softmax(w), softmax(g)), tie_aware, _abs_error(w, g), exact_agreements=exact)


def _token_classes(want: dict, got: dict, mask: np.ndarray, name: str) -> _Batch:
    w, g = want[name], got[name]  # [batch, sequence, labels]
    real = mask.astype(bool)
    pw, pg = softmax(w) * real[..., None], softmax(g) * real[..., None]
    cosines = _cosines(pw.reshape(len(w), -1), pg.reshape(len(g), -1))
    tie_aware, exact = label_agreement(w, g)
    return _Batch(cosines, tie_aware[real], _abs_error(w, g, mask), exact_agreements=exact[real])


def _span(want: dict, got: dict, mask: np.ndarray, name: str) -> _Batch:
    """Start and end logits [batch, sequence]: distributions over the real tokens only."""
    real = mask.astype(bool)
    names = [n for n in ("start_logits", "end_logits") if n in want] or [name]

    def distribution(logits: np.ndarray) -> np.ndarray:
        return softmax(np.where(real, logits, -np.inf)) if real.any() else softmax(logits)

    pw = np.concatenate([distribution(want[n]) for n in names], axis=1)
    pg = np.concatenate([distribution(got[n]) for n in names], axis=1)
    agree, exact = np.ones(len(mask), bool), np.ones(len(mask), bool)
    for n in names:
        tie_aware, same = label_agreement(want[n], got[n], real if real.any() else None)
        agree &= tie_aware
        exact &= same
    error = max(_abs_error(want[n], got[n], mask) for n in names)
    return _Batch(_cosines(pw, pg), agree, error, exact_agreements=exact)


MEASURES = {
    "pooled": _pooled,
    "embedding": _embedding,
    "classes": _classes,
    "token-classes": _token_classes,
    "span": _span,
}


def _as_outputs(value: Any, task: Task) -> dict[str, np.ndarray]:
    """A runner's outputs by name, float64; a bare array is the task's first output."""
    outputs = value if isinstance(value, dict) else {task.outputs[0]: value}
    return {k: np.asarray(v, dtype=np.float64) for k, v in outputs.items() if k in task.outputs}


def _compare_batch(want: Any, got: Any, mask: np.ndarray | None, task: Task) -> tuple[_Batch, int]:
    """One batch through the task's measure; non-finite candidate values count and become 0."""
    want, got = _as_outputs(want, task), _as_outputs(got, task)
    nonfinite = 0
    for name, value in got.items():
        bad = ~np.isfinite(value)
        nonfinite += int(bad.sum())
        got[name] = np.where(bad, 0.0, value)
    first = want[task.outputs[0]]
    if mask is None:
        mask = np.ones(first.shape[:2] if first.ndim > 1 else (len(first), 1), np.int64)
    return MEASURES[task.measure](want, got, mask, task.outputs[0]), nonfinite


def _judge(batches: list[_Batch], task: Task) -> tuple[float, float, float | None, float | None]:
    """Cosine mean, cosine min, agreement (tie-aware) and the exact agreement."""
    cosines = np.concatenate([b.cosines for b in batches])
    exact = None
    if task.judged_by == "neighbours":
        want = np.concatenate([b.want_vectors for b in batches])  # type: ignore[misc]
        got = np.concatenate([b.got_vectors for b in batches])  # type: ignore[misc]
        agreement, exact = neighbour_agreement(want, got) if len(want) > 2 else (None, None)
    else:
        decisions = np.concatenate([b.agreements for b in batches])
        agreement = float(np.mean(decisions)) if decisions.size else None
        if decisions.size and all(b.exact_agreements is not None for b in batches):
            exact = float(np.mean(np.concatenate([b.exact_agreements for b in batches])))  # type: ignore[misc]
    return float(cosines.mean()), float(cosines.min()), agreement, exact


def similarity_scores(
    reference: list[Any], candidate: list[Any], masks: list[np.ndarray | None], task: str
) -> tuple[float, float, float | None]:
    """(mean cosine, min cosine, agreement) over texts, with the task's measure; each item of
    ``reference`` and ``candidate`` is one batch's outputs (a dict by name, or the first output)."""
    spec = get_task(task)
    batches = [_compare_batch(w, g, m, spec)[0] for w, g, m in zip(reference, candidate, masks)]
    return _judge(batches, spec)[:3]


def compare(
    reference: Runner,
    candidate: Runner,
    batches: Iterable[Feeds],
    *,
    task: str,
    tolerances: Tolerances,
    output: str | None = None,  # noqa: ARG001 - the task names its outputs; kept for callers
    texts: str = "held out",
) -> ParityReport:
    """Run both runners on every batch and judge the candidate against the tolerances."""
    pairs = ((reference.infer(feeds), candidate.infer(feeds), feeds) for feeds in batches)
    return compare_outputs(pairs, task=task, tolerances=tolerances, texts=texts)


def compare_outputs(
    pairs: Iterable[tuple[Any, Any, Feeds]], *, task: str, tolerances: Tolerances, texts: str = "held out"
) -> ParityReport:
    """The same judgement on outputs someone else ran: (reference, candidate, the feeds) per batch,
    each output a dict by name or the task's first output alone. The TensorRT engine check uses it
    to judge the engine against ONNX Runtime as export parity is judged."""
    spec = get_task(task)
    compared: list[_Batch] = []
    nonfinite = 0
    max_abs_error = 0.0
    for want, got, feeds in pairs:
        result, bad = _compare_batch(want, got, feeds.get("attention_mask"), spec)
        compared.append(result)
        nonfinite += bad
        max_abs_error = max(max_abs_error, result.max_abs_error)
    if not compared:
        raise ValueError("parity needs at least one batch")
    cosine_mean, cosine_min, agreement, exact = _judge(compared, spec)
    neighbours = agreement if spec.judged_by == "neighbours" else None
    labels = agreement if spec.judged_by == "labels" else None

    failures: list[str] = []
    if nonfinite:
        failures.append(f"{nonfinite} non-finite output values (NaN or Inf)")
    if cosine_mean < tolerances.cosine_mean:
        failures.append(f"cosine mean {cosine_mean:.6f} < {tolerances.cosine_mean}")
    if cosine_min < tolerances.cosine_min:
        failures.append(f"cosine min {cosine_min:.6f} < {tolerances.cosine_min}")
    if neighbours is not None and neighbours < tolerances.neighbour_agreement:
        failures.append(f"top-1 neighbour agreement {neighbours:.3f} < {tolerances.neighbour_agreement}")
    if labels is not None and labels < tolerances.label_agreement:
        failures.append(f"label agreement {labels:.4f} < {tolerances.label_agreement}")
    if tolerances.max_abs_error is not None and max_abs_error > tolerances.max_abs_error:
        failures.append(f"max abs error {max_abs_error:.3g} > {tolerances.max_abs_error}")
    return ParityReport(
        task=task,
        samples=sum(len(b.cosines) for b in compared),
        cosine_mean=cosine_mean,
        cosine_min=cosine_min,
        neighbour_agreement=neighbours,
        label_agreement=labels,
        max_abs_error=max_abs_error,
        nonfinite=nonfinite,
        tolerances=tolerances,
        failures=tuple(failures),
        texts=texts,
        neighbour_agreement_exact=exact if neighbours is not None else None,
        label_agreement_exact=exact if labels is not None else None,
    )
