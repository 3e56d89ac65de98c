"""Tasks as data: what the artifact outputs, how parity judges it, which checkpoints default to it.

One entry per task. The loader reads ``auto_class`` and ``outputs``, the exporter names the
graph's outputs from ``outputs``, parity picks its measure from ``measure`` (see
optimize/parity.py) and the targets their tolerances from ``judged_by``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimize.errors import InputError


@dataclass(frozen=True)
class Task:
    name: str
    #: the graph's outputs in order; the first is the one parity and int8 calibration judge by
    outputs: tuple[str, ...]
    #: each output's axes; "batch" and "sequence" are dynamic
    axes: tuple[tuple[str, ...], ...]
    #: the transformers Auto class the checkpoint is loaded with
    auto_class: str
    #: checkpoints whose ``architectures`` end with one of these default to this task
    heads: tuple[str, ...]
    #: parity measure (optimize.parity.MEASURES): how artifact and reference outputs are compared
    measure: str
    #: "neighbours" (embeddings: top-1 nearest-neighbour agreement) or "labels" (argmax agreement)
    judged_by: str
    #: what a bundle of this task gives its user (optimize.load, issue 16, returns this)
    returns: str

    @property
    def classifier(self) -> bool:
        return self.judged_by == "labels"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "feature-extraction",
            ("last_hidden_state",),
            (("batch", "sequence", "hidden"),),
            "AutoModel",
            (),
            "pooled",
            "neighbours",
            "token embeddings [batch, sequence, hidden]",
        ),
        Task(
            "sentence-embedding",
            ("sentence_embedding", "token_embeddings"),
            (("batch", "hidden"), ("batch", "sequence", "hidden")),
            "AutoModel",
            (),
            "embedding",
            "neighbours",
            "one embedding per text [batch, hidden], pooled (and normalised) as the sentence-transformers folder says",
        ),
        Task(
            "text-classification",
            ("logits",),
            (("batch", "labels"),),
            "AutoModelForSequenceClassification",
            ("ForSequenceClassification",),
            "classes",
            "labels",
            "a label and its score per text",
        ),
        Task(
            "token-classification",
            ("logits",),
            (("batch", "sequence", "labels"),),
            "AutoModelForTokenClassification",
            ("ForTokenClassification",),
            "token-classes",
            "labels",
            "a label per token (entities with their character spans)",
        ),
        Task(
            "question-answering",
            ("start_logits", "end_logits"),
            (("batch", "sequence"), ("batch", "sequence")),
            "AutoModelForQuestionAnswering",
            ("ForQuestionAnswering",),
            "span",
            "labels",
            "the answer span (start and end token) per question and context",
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}", f"choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def default_task(config: dict[str, Any]) -> str:
    """The task the checkpoint's head says; a bare encoder gives feature extraction (even a
    sentence-transformers folder: its pooling is opt-in through --task sentence-embedding)."""
    for architecture in config.get("architectures") or []:
        for task in TASKS.values():
            if any(str(architecture).endswith(head) for head in task.heads):
                return task.name
    return "feature-extraction"
