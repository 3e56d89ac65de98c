"""A sentence-transformers folder's pipeline as one PyTorch module, so it exports into the graph.

sentence-transformers describes a model in ``modules.json``: a Transformer, then Pooling (its
config in the module's folder) and optionally Normalize. This reads those files (never the
sentence-transformers package, which the product does not depend on) and computes what its
``encode`` computes: the same pooling modes, in the same order when several are on, the same
clamps, and L2 normalisation with the same epsilon.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize.errors import InputError

MODULES_FILE = "modules.json"

#: sentence-transformers' legacy pooling keys, in the order it concatenates the active modes
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")


@dataclass(frozen=True)
class SentencePipeline:
    """What a sentence-transformers folder puts after its Transformer."""

    modes: tuple[str, ...]
    normalize: bool
    max_seq_length: int | None

    def describe(self) -> str:
        norm = ", L2-normalised" if self.normalize else ""
        return f"{'+'.join(self.modes)} pooling{norm}"


def is_sentence_transformers(path: Path) -> bool:
    return (path / MODULES_FILE).is_file()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc.__class__.__name__})", "restore the file from the model's source") from exc


def _modes(config: dict[str, Any]) -> tuple[str, ...]:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return (mode,) if isinstance(mode, str) else tuple(mode)
    return tuple(mode for key, mode in _LEGACY_MODES.items() if config.get(key))


def read_pipeline(path: Path) -> SentencePipeline:
    """Pooling and Normalize of the sentence-transformers folder ``path``; InputError otherwise."""
    if not is_sentence_transformers(path):
        raise InputError(
            f"{path} is not a sentence-transformers folder (no {MODULES_FILE})",
            "use --task feature-extraction, or pass a folder saved by SentenceTransformer.save()",
        )
    modules = _json(path / MODULES_FILE)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown or pooling is None or kinds[0] != "Transformer":
        raise InputError(
            f"{path / MODULES_FILE} holds modules {', '.join(kinds)}; sentence-embedding takes Transformer, "
            "Pooling and optionally Normalize",
            "use --task feature-extraction and pool the token embeddings yourself",
        )
    config_file = path / pooling.get("path", "") / "config.json"
    modes = _modes(_json(config_file)) if config_file.is_file() else ("mean",)
    bad = [m for m in modes if m not in SUPPORTED_MODES]
    if not modes or bad:
        raise InputError(
            f"pooling mode {', '.join(bad) or 'none'} in {config_file} is not supported",
            f"supported: {', '.join(SUPPORTED_MODES)}",
        )
    settings = path / "sentence_bert_config.json"
    max_len = _json(settings).get("max_seq_length") if settings.is_file() else None
    return SentencePipeline(modes, "Normalize" in kinds, int(max_len) if max_len else None)


@functools.cache
def _output_class():  # -> type: a transformers ModelOutput (a dataclass), made once
    import dataclasses

    import torch
    from transformers.modeling_outputs import ModelOutput

    @dataclasses.dataclass
    class SentenceEmbeddingOutput(ModelOutput):
        sentence_embedding: torch.Tensor | None = None
        token_embeddings: torch.Tensor | None = None
        last_hidden_state: torch.Tensor | None = None
        hidden_states: tuple[torch.Tensor, ...] | None = None

    return SentenceEmbeddingOutput


def sentence_module(encoder: Any, pipeline: SentencePipeline):  # -> torch.nn.Module
    """``encoder`` followed by the pooling and normalisation, returning both outputs by name."""
    import torch

    output_class = _output_class()

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.config = encoder.config
            self.modes = pipeline.modes
            self.normalize = pipeline.normalize

        @property
        def base_model(self) -> Any:  # pruning and the encoder's layers are found through it
            return self.encoder.base_model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):  # noqa: ANN001, ANN003
            kwargs.pop("return_dict", None)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
            tokens = out.last_hidden_state
            mask = attention_mask if attention_mask is not None else torch.ones(tokens.shape[:2], dtype=torch.long)
            pooled = torch.cat([_pool(mode, tokens, mask) for mode in self.modes], dim=-1)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return output_class(
                sentence_embedding=pooled, token_embeddings=tokens, last_hidden_state=tokens,
                hidden_states=getattr(out, "hidden_states", None),
            )

    return SentenceEmbedder().eval()


def _pool(mode: str, tokens: Any, attention_mask: Any) -> Any:
    """One pooling mode, as sentence-transformers' Pooling computes it on a padded batch."""
    import torch

    if mode == "cls":
        first = attention_mask.to(torch.int32).argmax(dim=1)
        index = first[:, None, None].expand(-1, 1, tokens.shape[-1])
        return torch.gather(tokens, 1, index).squeeze(1)
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "max":
        return tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total = (tokens * mask).sum(dim=1)
        count = torch.clamp(mask.sum(dim=1), min=1e-9)
        return total / (count if mode == "mean" else torch.sqrt(count))
    # lasttoken: the last real token of each row (right or left padding alike)
    seq_len = tokens.shape[1]
    values, indices = attention_mask.to(torch.int32).flip(1).max(1)
    indices = torch.where(values == 0, seq_len - 1, indices)
    index = (seq_len - indices - 1)[:, None, None].expand(-1, 1, tokens.shape[-1])
    return torch.gather(tokens * mask, 1, index).squeeze(1)
