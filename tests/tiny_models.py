"""Tiny random-weight models of real architectures, saved as local Hugging Face folders.

Real transformers classes with real tokenizers, shrunk so a test exports one in seconds.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("bert", "distilbert", "roberta")


def _wordpiece_vocab() -> Path:
    from optimize.exporter.resolve import embedded_model_path

    return embedded_model_path() / "vocab.txt"


def _bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    from optimize.calibration.corpus import pydoc_paragraphs

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(list(pydoc_paragraphs())[:300], vocab_size=1000, min_frequency=2, special_tokens=specials)
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )


def build(kind: str, folder: Path, *, classification: bool = False, layers: int = 2, seed: int = 0, init_std: float | None = None) -> Path:
    """Write a tiny ``kind`` model (random weights, fixed seed) and its tokenizer to ``folder``.

    ``init_std``: the weights' standard deviation (transformers' default 0.02 leaves a random
    model's layers nearly inert; a larger one makes what they compute matter)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "bert":
        config = tf.BertConfig(
            vocab_size=30522, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128,
        )
        tokenizer = tf.BertTokenizerFast(vocab_file=str(_wordpiece_vocab()), model_max_length=128)
    elif kind == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=30522, dim=64, n_layers=layers, n_heads=4, hidden_dim=128, max_position_embeddings=128,
        )
        tokenizer = tf.DistilBertTokenizerFast(vocab_file=str(_wordpiece_vocab()), model_max_length=128)
    elif kind == "roberta":
        tokenizer = _bpe_tokenizer()
        config = tf.RobertaConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1,
        )
    else:
        raise ValueError(kind)
    if init_std is not None:
        config.initializer_range = init_std
    if classification:
        config.num_labels = 3
        model = tf.AutoModelForSequenceClassification.from_config(config)
    else:
        model = tf.AutoModel.from_config(config)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
