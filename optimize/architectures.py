"""Encoder families as data: one description per family that the loader, the fusion pass and
pruning read, instead of branches on ``model_type`` spread through the code.

A description says how to load the family for export (an attention implementation whose
padding behaviour the exported graph reproduces), which ONNX Runtime fusions its graph
reaches (the ort-* targets check them and name what did not fuse, and why), and where its
attention heads and FFN neurons live for pruning (or why they cannot be cut).

A model whose ``model_type`` is none of these goes through the generic path: the same
export, the passes whose patterns match, the same parity gate, and a line saying that the
architecture is not in the tested list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optimize.errors import InputError


@dataclass(frozen=True)
class PruningLayout:
    """Where one encoder layer's prunable linears live, as dotted attribute paths.

    ``layers`` runs from the base model to the layers (``*`` expands a ModuleList); the other
    paths run from one layer. Each linear is a ``torch.nn.Linear`` whose output features are
    heads (Q, K, V), or whose input features are heads (``output``) or neurons (``ffn_out``).

    Post-norm layers (BERT) add each branch to the residual and normalise the sum; pre-norm
    layers (ModernBERT) normalise each branch's input. Either way the reconstruction fits each
    branch to the residual sum after it: ``attention_norm`` and ``ffn_norm`` name the modules
    that sum enters, and ``ffn_norm`` "" means the layer's own output (pre-norm: the next
    layer's norm reads it).
    """

    layers: str
    attention: str  # the module holding Q, K and V ("" is the layer itself)
    #: three linears (Q, K, V), or one whose output features are Q, K and V stacked (ModernBERT's Wqkv)
    qkv: tuple[str, ...]
    output: str
    attention_norm: str
    ffn_in: str
    ffn_out: str
    ffn_norm: str
    #: the first FFN linear writes two halves, the value and its gate (GeGLU): neuron j is its
    #: output features j and j + neurons
    gated_ffn: bool = False
    #: further linears of the attention module whose output features are heads, cut with them
    #: and not counted or re-fitted (DeBERTa's separate position projections, where a model has them)
    head_projections: tuple[str, ...] = ()
    #: an attribute of the attention module that, when true, says Q and K also project something
    #: the least-squares fit does not see (DeBERTa's ``share_att_key``: the relative position
    #: embeddings); the fit then re-fits V alone, not Q and K to the content inputs only
    qk_shared_when: str = ""
    #: config attributes that, when set, put a model of the family out of pruning's reach, and why
    unsupported: tuple[tuple[str, str], ...] = ()
    #: an input of the attention module that carries one slice per head and is computed once
    #: for all layers (MPNet's relative position bias): (positional index, keyword name). A layer
    #: that keeps fewer heads gets that input cut to its heads.
    head_input: tuple[int, str] | None = None
    #: one layer's weights serve every depth (ALBERT): pruned once, for all its uses.
    shared: bool = False


@dataclass(frozen=True)
class Architecture:
    """One encoder family."""

    model_type: str
    #: fusion counts the ORT pass must reach, once per layer: names of OrtFusionPass's counts
    #: ("attention": one com.microsoft Attention; "bias_gelu"; "mha": MultiHeadAttention).
    fusions: tuple[str, ...]
    #: what does not fuse and why, printed on the export line and kept in the manifest
    unfused: dict[str, str] = field(default_factory=dict)
    #: rewrite rules of our own (optimize/passes/family_rules.py), applied before onnxscript's
    rules: tuple[str, ...] = ()
    pruning: PruningLayout | None = None
    #: transformers attention implementation to load the model with (None: its default)
    attn_implementation: str | None = None
    #: positions a RoBERTa-style model reserves before the first token (padding_idx + 1)
    reserved_positions: bool = False
    tested: bool = True

    @property
    def prunable(self) -> bool:
        return self.pruning is not None

    def expected_fusions(self, config: Any, layers: int) -> dict[str, int]:
        """What the ORT fusion pass must reach on this family: each of ``fusions`` per layer.
        BiasGelu only where the FFN activation is erf GELU (tanh GELU fuses differently)."""
        activation = getattr(config, "hidden_act", getattr(config, "activation", ""))
        expected = {}
        for name in self.fusions:
            if name == "bias_gelu" and activation != "gelu":
                continue
            expected[name] = layers
        return expected


_BERT_LAYOUT = PruningLayout(
    layers="encoder.layer.*",
    attention="attention.self",
    qkv=("query", "key", "value"),
    output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    ffn_norm="output.LayerNorm",
)

_STANDARD_FUSIONS = ("attention", "bias_gelu")

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("bert", _STANDARD_FUSIONS, pruning=_BERT_LAYOUT),
        Architecture("roberta", _STANDARD_FUSIONS, pruning=_BERT_LAYOUT, reserved_positions=True),
        Architecture("xlm-roberta", _STANDARD_FUSIONS, pruning=_BERT_LAYOUT, reserved_positions=True),
        Architecture("electra", _STANDARD_FUSIONS, pruning=_BERT_LAYOUT),
        Architecture(
            "distilbert",
            _STANDARD_FUSIONS,
            pruning=PruningLayout(
                layers="transformer.layer.*",
                attention="attention",
                qkv=("q_lin", "k_lin", "v_lin"),
                output="attention.out_lin",
                attention_norm="sa_layer_norm",
                ffn_in="ffn.lin1",
                ffn_out="ffn.lin2",
                ffn_norm="output_layer_norm",
            ),
        ),
        Architecture(
            "albert",
            _STANDARD_FUSIONS,
            pruning=PruningLayout(
                layers="encoder.albert_layer_groups.*.albert_layers.*",
                attention="attention",
                qkv=("query", "key", "value"),
                output="attention.dense",
                attention_norm="attention.LayerNorm",
                ffn_in="ffn",
                ffn_out="ffn_output",
                ffn_norm="full_layer_layer_norm",
                shared=True,
            ),
        ),
        Architecture(
            "mpnet",
            _STANDARD_FUSIONS,
            # the relative position bias and the padding mask are two additive terms; ORT's
            # Attention takes one: they are summed first so the attention patterns match
            rules=("merge_attention_biases",),
            pruning=PruningLayout(
                layers="encoder.layer.*",
                attention="attention.attn",
                qkv=("q", "k", "v"),
                output="attention.attn.o",
                attention_norm="attention.LayerNorm",
                ffn_in="intermediate.dense",
                ffn_out="output.dense",
                ffn_norm="output.LayerNorm",
                head_input=(2, "position_bias"),
            ),
            reserved_positions=True,
        ),
        Architecture(
            "deberta-v2",
            ("bias_gelu",),
            pruning=dataclasses.replace(  # BERT's layout, with DeBERTa's names for Q, K and V
                _BERT_LAYOUT,
                qkv=("query_proj", "key_proj", "value_proj"),
                # without share_att_key the relative embeddings have projections of their own
                head_projections=("pos_key_proj", "pos_query_proj"),
                # with it (DeBERTa-v3) Q and K also project the relative position embeddings
                qk_shared_when="share_att_key",
                unsupported=(
                    (
                        "conv_kernel_size",
                        (
                            "its convolution after the first layer (conv_kernel_size, as in DeBERTa-v2-xlarge) runs outside "
                            "the layers, which the layer-by-layer fit and --drop-layers do not model"
                        ),
                    ),
                ),
            ),
            unfused={
                "attention": "disentangled attention (content-to-position and position-to-content terms gathered by "
                "relative distance) has no ONNX Runtime CPU kernel; it runs as MatMul/Softmax"
            },
        ),
        Architecture(
            "modernbert",
            ("mha",),
            unfused={
                "geglu": "ONNX Runtime has no CPU kernel for a gated GELU (BiasSplitGelu is CUDA-only); it runs as Split, Gelu, Mul",
                "rotary": "ORT's RotaryEmbedding wants a cos/sin cache; onnxscript's cache rule matches Llama's MatMul form of "
                "the angles, not ModernBERT's Mul form, so RoPE runs as Mul, Slice, Neg, Concat",
            },
            rules=("rotary",),
            pruning=PruningLayout(
                layers="layers.*",
                attention="attn",
                qkv=("Wqkv",),
                output="attn.Wo",
                attention_norm="mlp_norm",  # pre-norm: the residual after attention enters the MLP's norm
                ffn_in="mlp.Wi",
                ffn_out="mlp.Wo",
                ffn_norm="",  # the residual after the MLP is the layer's output
                gated_ffn=True,
            ),
            # SDPA's boolean mask leaves a padded query whose local window holds only padding
            # with no key at all, and PyTorch and the exported graph fill that row differently
            # (8e-3 apart after the final norm). Eager attention adds a finite minimum instead:
            # the row is a defined average, the same in both; real tokens are unchanged.
            attn_implementation="eager",
        ),
    )
}

#: why pruning is unavailable, for tested families that have no layout (none today)
NOT_PRUNABLE: dict[str, str] = {}


def generic(model_type: str) -> Architecture:
    """An encoder outside the tested list: whatever fuses fuses, nothing is expected."""
    return Architecture(model_type or "unknown", (), tested=False)


def describe(model_type: str) -> Architecture:
    return ARCHITECTURES.get(model_type) or generic(model_type)


def pruning_refusal(model_type: str, config: Mapping[str, Any]) -> InputError | None:
    """Why a model of this type and config.json cannot be pruned (the one-line error to raise),
    or None when its layout is known. Read from the config alone, so a search can leave pruning
    out before it loads a model."""
    layout = describe(model_type).pruning
    if layout is None:
        why = NOT_PRUNABLE.get(model_type, "it is not in the tested list, so where its heads and neurons live is not known")
        return InputError(
            f"pruning is not available for architecture {model_type or 'unknown'!r}: {why}",
            f"export without --prune; pruning is available for {', '.join(prunable_names())}",
        )
    for attribute, why in layout.unsupported:
        if config.get(attribute):
            return InputError(f"pruning is not available for this {model_type} model: {why}", "export without --prune and --drop-layers")
    return None


def tested_names() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def prunable_names() -> tuple[str, ...]:
    return tuple(name for name, arch in ARCHITECTURES.items() if arch.prunable)
