"""What a bundle gives its user, one class per task (optimize/tasks.py names each task's class).

Each takes texts and returns what the task means: embeddings, labels with scores, entities with
character spans, answer spans. ``predict(inputs)`` gives one JSON-ready dict per input in the
caller's order (what `optimize run` prints); each class also has the call a library user wants
(``encode``, ``answer``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from optimize.errors import InputError
from optimize.inference import BundleRuntime


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def _texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):  # one text, not its characters
        return [texts]
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise InputError(f"inputs must be strings, got {bad[0]}", "pass a list of texts")
    return texts


class BundleModel:
    """The common part: the bundle it runs, and its labels where it has them."""

    def __init__(self, runtime: BundleRuntime) -> None:
        self.runtime = runtime
        self.task = str(runtime.manifest.get("task"))
        self.path = runtime.bundle.path

    @property
    def tokenizer(self) -> Any:
        return self.runtime.tokenizer

    @property
    def manifest(self) -> dict[str, Any]:
        return self.runtime.manifest

    def _id2label(self) -> dict[int, str]:
        config = self.runtime.config()
        labels = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        return labels or {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, task={self.task!r}, target={self.runtime.bundle.target!r})"

    def predict(self, inputs: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        raise NotImplementedError


class Embedder(BundleModel):
    """feature-extraction (mean-pooled token embeddings) and sentence-embedding (the graph's own
    pooling and normalisation, as the sentence-transformers folder says)."""

    def encode(self, texts: Sequence[str] | str, batch_size: int = 32, normalize: bool = False) -> np.ndarray:
        """One float32 embedding per text, [len(texts), hidden]; ``normalize``: L2-normalised."""
        texts = _texts(texts)
        rows: list[np.ndarray | None] = [None] * len(texts)
        for batch in self.runtime.batches(texts, batch_size):
            pooled = self._pooled(batch.outputs, batch.mask)
            for r, i in enumerate(batch.rows):
                rows[i] = pooled[r]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        embeddings = np.stack(rows).astype(np.float32)  # type: ignore[arg-type]
        if normalize:
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings

    __call__ = encode

    def token_embeddings(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[np.ndarray]:
        """Per text, its real tokens' embeddings [tokens, hidden] (special tokens included, padding not)."""
        texts = _texts(texts)
        name = "token_embeddings" if self.task == "sentence-embedding" else "last_hidden_state"
        out: list[np.ndarray | None] = [None] * len(texts)
        for batch in self.runtime.batches(texts, batch_size):
            mask = batch.mask.astype(bool)
            for r, i in enumerate(batch.rows):
                out[i] = batch.outputs[name][r][mask[r]].astype(np.float32)
        return out  # type: ignore[return-value]

    @property
    def dimension(self) -> int:
        output = self.manifest["io"]["outputs"][0]
        return int(output["shape"][-1])

    def _pooled(self, outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        if self.task == "sentence-embedding":
            return outputs["sentence_embedding"]
        # feature-extraction: the mean over real tokens, as the parity gate pools it
        tokens = outputs["last_hidden_state"].astype(np.float32)
        weights = mask.astype(np.float32)[:, :, None]
        return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def predict(self, inputs: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        return [{"embedding": [float(x) for x in row]} for row in self.encode(inputs, batch_size)]


class Classifier(BundleModel):
    """text-classification: a label (``id2label`` of the bundle's config) and its score per text."""

    def logits(self, texts: Sequence[str] | str, batch_size: int = 32) -> np.ndarray:
        texts = _texts(texts)
        labels = len(self._id2label())
        out = np.zeros((len(texts), labels), dtype=np.float32)
        for batch in self.runtime.batches(texts, batch_size):
            out[batch.rows] = batch.outputs["logits"]
        return out

    def scores(self, texts: Sequence[str] | str, batch_size: int = 32) -> np.ndarray:
        """Class probabilities: softmax, or a sigmoid per label for a multi-label head."""
        logits = self.logits(texts, batch_size)
        if self.runtime.config().get("problem_type") == "multi_label_classification":
            return 1.0 / (1.0 + np.exp(-logits))
        return _softmax(logits)

    def predict(self, inputs: Sequence[str] | str, batch_size: int = 32) -> list[dict[str, Any]]:
        names = self._id2label()
        scores = self.scores(inputs, batch_size)
        return [{"label": names[int(row.argmax())], "score": float(row.max())} for row in scores]

    __call__ = predict


class TokenClassifier(BundleModel):
    """token-classification: entities with their character spans, tokens grouped as transformers'
    pipeline groups them with ``aggregation_strategy="simple"`` (B-/I- tags of one type, and the
    word pieces of one word, make one entity; "O" is no entity)."""

    def predict(self, inputs: Sequence[str] | str, batch_size: int = 32) -> list[dict[str, Any]]:
        texts = _texts(inputs)
        return [{"entities": entities} for entities in self.entities(texts, batch_size)]

    __call__ = predict

    def entities(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[list[dict[str, Any]]]:
        texts = _texts(texts)
        names = self._id2label()
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        for batch in self.runtime.batches(texts, batch_size, offsets=True):
            probabilities = _softmax(batch.outputs["logits"].astype(np.float64))
            for r, i in enumerate(batch.rows):
                out[i] = self._group(texts[i], batch.encodings[r], probabilities[r], names)
        return out

    @staticmethod
    def _group(text: str, encoding: Any, probabilities: np.ndarray, names: dict[int, str]) -> list[dict[str, Any]]:
        """transformers' ``group_entities``: consecutive tokens of one type make one entity
        unless a token is tagged B-; entities of type O are dropped. The word is the text's own
        characters at the span (transformers decodes the tokens, which loses case and spacing)."""
        groups: list[dict[str, Any]] = []
        for t, (start, end) in enumerate(encoding.offsets):
            if encoding.special_tokens_mask[t]:
                continue
            label = names[int(probabilities[t].argmax())]
            tag, kind = (label[0], label[2:]) if label[:2] in ("B-", "I-") else ("I", label)
            if groups and groups[-1]["entity_group"] == kind and tag != "B":
                groups[-1]["end"] = end
                groups[-1]["scores"].append(float(probabilities[t].max()))
            else:
                groups.append({"entity_group": kind, "start": start, "end": end, "scores": [float(probabilities[t].max())]})
        return [
            {"entity_group": g["entity_group"], "score": float(np.mean(g["scores"])), "word": text[g["start"] : g["end"]], "start": g["start"], "end": g["end"]}
            for g in groups
            if g["entity_group"] != "O"
        ]


class QuestionAnswerer(BundleModel):
    """question-answering: the best answer span in the context (the highest start + end logit
    with start <= end, within the context and at most ``max_answer_tokens`` long), its text, its
    character span and its score (the product of the start and end probabilities over the
    context's tokens). A context longer than the bundle's sequence is truncated, not windowed."""

    max_answer_tokens = 30

    def answer(self, question: str, context: str) -> dict[str, Any]:
        return self.answers([question], [context])[0]

    def answers(self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        questions, contexts = _texts(questions), _texts(contexts)
        if len(questions) != len(contexts):
            raise InputError(f"{len(questions)} questions for {len(contexts)} contexts", "pass one context per question")
        out: list[dict[str, Any]] = [{} for _ in questions]
        for batch in self.runtime.batches(questions, batch_size, pairs=contexts, offsets=True):
            for r, i in enumerate(batch.rows):
                out[i] = self._best(contexts[i], batch.encodings[r], batch.outputs["start_logits"][r], batch.outputs["end_logits"][r])
        return out

    def _best(self, context: str, encoding: Any, start_logits: np.ndarray, end_logits: np.ndarray) -> dict[str, Any]:
        inside = np.array([s == 1 for s in encoding.sequence_ids], dtype=bool)
        if not inside.any():
            return {"answer": "", "score": 0.0, "start": 0, "end": 0}
        n = len(encoding.sequence_ids)
        start_p = _softmax(np.where(inside, start_logits[:n], -np.inf).astype(np.float64))
        end_p = _softmax(np.where(inside, end_logits[:n], -np.inf).astype(np.float64))
        pair = np.triu(np.outer(start_p, end_p)) - np.triu(np.outer(start_p, end_p), self.max_answer_tokens)
        s, e = np.unravel_index(int(pair.argmax()), pair.shape)
        begin, finish = encoding.offsets[s][0], encoding.offsets[e][1]
        return {"answer": context[begin:finish], "score": float(pair[s, e]), "start": int(begin), "end": int(finish)}

    def predict(self, inputs: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        """Each input a (question, context) pair, a {"question", "context"} dict, or that dict as JSON."""
        pairs = [self._pair(item) for item in ([inputs] if isinstance(inputs, (str, dict)) else inputs)]
        return self.answers([q for q, _ in pairs], [c for _, c in pairs], batch_size)

    __call__ = predict

    @staticmethod
    def _pair(item: Any) -> tuple[str, str]:
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except json.JSONDecodeError:
                item = None
        if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
            return item["question"], item["context"]
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            return item[0], item[1]
        raise InputError(
            "a question-answering input is a question and its context",
            'pass {"question": "...", "context": "..."} (one JSON object per line), or (question, context) pairs',
        )
