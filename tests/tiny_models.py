"""Tiny random-weight models of real architectures, saved as local Hugging Face folders.

Real transformers classes with real tokenizers, shrunk so a test exports one in seconds:
hidden 64, 4 heads, FFN 128, 2 layers (3 for ModernBERT, so one of its layers is global and the
others local). WordPiece tokenizers reuse the embedded BERT's vocabulary; BPE and Unigram
(SentencePiece-style) tokenizers are trained in a second on the built-in corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

#: the named (tested) architectures, one tiny builder each
ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "mpnet", "deberta-v2", "modernbert")
#: an encoder outside the tested list, for the generic path
GENERIC = "ernie"

#: heads a tiny model can carry: the value of ``head=`` -> the transformers Auto class
HEADS = {
    None: "AutoModel",
    "sequence": "AutoModelForSequenceClassification",
    "token": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
}

_SIZE = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}

#: texts a tiny model's pruning scores and fits read (PruneConfig.fit_texts): enough to rank 4
#: heads and 128 neurons a layer; the 8,192 a real model gets took 14 s of a 25 s tiny export
TINY_FIT = 512


def _wordpiece_vocab() -> dict[str, int]:
    """The embedded BERT's WordPiece vocabulary. Passed as a dict: transformers 5's tokenizers
    ignore ``vocab_file=`` and would map every word to [UNK], leaving the model nothing to tell
    texts apart by but their length."""
    from optimize.exporter.resolve import embedded_model_path

    words = (embedded_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {word: index for index, word in enumerate(words)}


def _corpus() -> list[str]:
    from optimize.calibration.corpus import pydoc_paragraphs

    return list(pydoc_paragraphs())[:300]


def _bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(_corpus(), vocab_size=1000, min_frequency=2, special_tokens=specials)
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )


def _unigram_vocab(specials: list[str], unk: str) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary (pieces with scores), specials first."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token=unk)
    tokenizer.train_from_iterator(_corpus(), trainer)
    return [(piece, score) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]


def _model_and_tokenizer(kind: str, layers: int):  # -> (config, tokenizer)
    import transformers as tf

    if kind == "bert":
        config = tf.BertConfig(vocab_size=30522, num_hidden_layers=layers, max_position_embeddings=128, **_SIZE)
        return config, tf.BertTokenizerFast(vocab=_wordpiece_vocab(), model_max_length=128)
    if kind == GENERIC:  # ERNIE: a BERT-shaped encoder transformers knows, outside the tested list
        config = tf.ErnieConfig(vocab_size=30522, num_hidden_layers=layers, max_position_embeddings=128, **_SIZE)
        return config, tf.BertTokenizerFast(vocab=_wordpiece_vocab(), model_max_length=128)
    if kind == "distilbert":
        config = tf.DistilBertConfig(vocab_size=30522, dim=64, n_layers=layers, n_heads=4, hidden_dim=128, max_position_embeddings=128)
        return config, tf.DistilBertTokenizerFast(vocab=_wordpiece_vocab(), model_max_length=128)
    if kind == "electra":
        config = tf.ElectraConfig(vocab_size=30522, embedding_size=32, num_hidden_layers=layers, max_position_embeddings=128, **_SIZE)
        return config, tf.ElectraTokenizerFast(vocab=_wordpiece_vocab(), model_max_length=128)
    if kind == "mpnet":
        tokenizer = tf.MPNetTokenizerFast(vocab=_wordpiece_vocab(), model_max_length=128)
        config = tf.MPNetConfig(vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=130, **_SIZE)
        return config, tokenizer
    if kind in ("roberta", "modernbert"):
        tokenizer = _bpe_tokenizer()
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        if kind == "roberta":
            config = tf.RobertaConfig(
                vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=130, type_vocab_size=1, **ids, **_SIZE
            )
        else:
            # three layers: one global (every third) and two local ones with a window of 16, shorter
            # than the sequences the tests run, so the sliding-window mask really cuts
            config = tf.ModernBertConfig(
                vocab_size=len(tokenizer), num_hidden_layers=max(layers, 3), max_position_embeddings=128,
                local_attention=16, global_attn_every_n_layers=3, cls_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id, **ids, **_SIZE,
            )
        return config, tokenizer
    if kind == "xlm-roberta":
        tokenizer = tf.XLMRobertaTokenizer(vocab=_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>"), model_max_length=128)
        config = tf.XLMRobertaConfig(
            vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=130, type_vocab_size=1,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **_SIZE,
        )
        return config, tokenizer
    if kind == "albert":
        tokenizer = tf.AlbertTokenizer(vocab=_unigram_vocab(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>"), model_max_length=128)
        config = tf.AlbertConfig(
            vocab_size=len(tokenizer), embedding_size=32, num_hidden_layers=layers, max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, hidden_act="gelu", **_SIZE,
        )
        return config, tokenizer
    if kind == "deberta-v2":  # DeBERTa-v3's configuration: relative positions in buckets, shared keys
        tokenizer = tf.DebertaV2Tokenizer(vocab=_unigram_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]"), model_max_length=128)
        config = tf.DebertaV2Config(
            vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=128, relative_attention=True,
            position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
            share_att_key=True, position_biased_input=False, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id, **_SIZE,
        )
        return config, tokenizer
    raise ValueError(kind)


def build(
    kind: str, folder: Path, *, classification: bool = False, head: str | None = None, layers: int = 2, seed: int = 0,
    init_std: float | None = None,
) -> Path:
    """Write a tiny ``kind`` model (random weights, fixed seed) and its tokenizer to ``folder``.

    ``head``: None (bare encoder), "sequence", "token" or "qa"; ``classification`` is "sequence".
    ``init_std``: the weights' standard deviation (transformers' default 0.02 leaves a random
    model's layers nearly inert; a larger one makes what they compute matter).
    """
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config, tokenizer = _model_and_tokenizer(kind, layers)
    if init_std is not None:
        config.initializer_range = init_std
    head = "sequence" if classification else head
    if head in ("sequence", "token"):
        config.num_labels = 3
    model = getattr(tf, HEADS[head]).from_config(config)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentence_transformers_folder(model: Path, folder: Path, modes: tuple[str, ...] = ("mean",), normalize: bool = True) -> Path:
    """A sentence-transformers folder around the tiny model in ``model``: modules.json, the
    pooling config and sentence_bert_config.json, laid out as SentenceTransformer.save() does."""
    import shutil

    shutil.copytree(model, folder, dirs_exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, "pooling_mode": list(modes)}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder
