"""Tasks and architectures as data: defaults, refusals, and each task's parity measure on outputs
we control exactly."""

import numpy as np
import pytest

from optimize.architectures import ARCHITECTURES, describe
from optimize.config import Tolerances
from optimize.exporter.resolve import encoder_refusal
from optimize.parity import compare
from optimize.runtimes.base import Runner
from optimize.tasks import TASKS, default_task


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["BertModel"], "feature-extraction"),
        (["RobertaForSequenceClassification"], "text-classification"),
        (["DebertaV2ForTokenClassification"], "token-classification"),
        (["ModernBertForQuestionAnswering"], "question-answering"),
        ([], "feature-extraction"),
    ],
)
def test_default_task_follows_the_checkpoint_head(architectures, task):
    assert default_task({"architectures": architectures}) == task


def test_sentence_embedding_is_never_a_default():
    assert all(default_task({"architectures": [f"Bert{h}"]}) != "sentence-embedding" for t in TASKS.values() for h in t.heads)


@pytest.mark.parametrize(
    ("model_type", "config", "reason"),
    [
        ("gpt2", {}, "decoder"),
        ("t5", {"is_encoder_decoder": True}, "encoder-decoder"),
        ("no-such-model", {}, "does not know"),
        ("ernie", {}, None),
        ("camembert", {}, None),
    ],
)
def test_only_encoders_take_the_generic_path(model_type, config, reason):
    got = encoder_refusal(model_type, config)
    assert (got is None) if reason is None else (reason in got)


def test_unknown_families_are_generic_and_expect_no_fusion():
    family = describe("ernie")
    assert not family.tested and not family.prunable and family.expected_fusions(object(), 12) == {}
    assert all(a.tested for a in ARCHITECTURES.values()) and len(ARCHITECTURES) == 9


def test_bias_gelu_is_expected_only_for_erf_gelu():
    class Config:
        hidden_act = "gelu_new"

    assert describe("bert").expected_fusions(Config(), 4) == {"attention": 4}
    Config.hidden_act = "gelu"
    assert describe("bert").expected_fusions(Config(), 4) == {"attention": 4, "bias_gelu": 4}


class Fixed(Runner):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    input_names = ("input_ids", "attention_mask")
    output_names = ()

    def _infer(self, feeds):
        return self.outputs(feeds)


def _batches(batch=4, seq=6):
    rng = np.random.default_rng(0)
    for _ in range(2):
        mask = np.ones((batch, seq), np.int64)
        mask[0, 3:] = 0
        yield {"input_ids": rng.integers(0, 50, (batch, seq)), "attention_mask": mask}


def _token_logits(feeds):
    ids = feeds["input_ids"].astype(float)
    return np.stack([np.sin(ids), np.cos(ids), np.sin(2 * ids)], axis=-1)


_LOOSE = Tolerances(cosine_mean=-1, cosine_min=-1, neighbour_agreement=0, label_agreement=0)


def test_token_classification_judges_real_tokens_only():
    def padding_garbage(feeds):
        out = _token_logits(feeds)
        out[feeds["attention_mask"] == 0] = [[100.0, -100.0, 0.0]]
        return out

    same = compare(Fixed(lambda f: {"logits": _token_logits(f)}), Fixed(lambda f: {"logits": padding_garbage(f)}),
                   _batches(), task="token-classification", tolerances=Tolerances(max_abs_error=1e-6))
    assert same.ok and same.label_agreement == 1.0 and same.samples == 8
    flipped = compare(Fixed(lambda f: {"logits": _token_logits(f)}), Fixed(lambda f: {"logits": -_token_logits(f)}),
                      _batches(), task="token-classification", tolerances=_LOOSE)
    assert flipped.label_agreement < 0.5 and flipped.cosine_mean < 0.9


def test_question_answering_judges_start_and_end():
    def spans(feeds, shift_end=False):
        ids = feeds["input_ids"].astype(float)
        end = np.roll(ids, 1, axis=1) if shift_end else ids
        return {"start_logits": np.sin(ids), "end_logits": np.cos(end)}

    same = compare(Fixed(spans), Fixed(spans), _batches(), task="question-answering", tolerances=Tolerances())
    assert same.ok and same.label_agreement == 1.0
    moved = compare(Fixed(spans), Fixed(lambda f: spans(f, shift_end=True)), _batches(), task="question-answering", tolerances=_LOOSE)
    assert moved.label_agreement < 1.0 and moved.cosine_min < 0.99  # only the end moved, and it counts


def test_sentence_embedding_compares_the_embeddings_themselves():
    def embed(feeds):
        ids = feeds["input_ids"].astype(float)
        return {"sentence_embedding": np.stack([np.sin(ids).sum(1), np.cos(ids).sum(1), ids.mean(1)], axis=1),
                "token_embeddings": np.zeros(ids.shape + (3,))}

    same = compare(Fixed(embed), Fixed(embed), _batches(), task="sentence-embedding", tolerances=Tolerances())
    assert same.ok and same.neighbour_agreement == 1.0 and same.samples == 8
    noisy = compare(Fixed(embed), Fixed(lambda f: {**embed(f), "sentence_embedding": embed(f)["sentence_embedding"][:, ::-1]}),
                    _batches(), task="sentence-embedding", tolerances=Tolerances())
    assert not noisy.ok
