"""Where the prunable parts of an encoder live, and how to cut them out physically.

A layer's attention heads are column blocks of Q, K and V and row blocks (input features) of
the output projection; its FFN neurons are output features of the first FFN linear and input
features of the second. Cutting means new, smaller ``nn.Linear`` modules: the exported graph
then has smaller matrices and reshape constants that follow (the models reshape with -1 heads).

What is counted as "encoder parameters" (``--prune`` is a fraction of these): the weights and
biases of Q, K, V, the attention output projection and both FFN linears of every layer.
Embeddings, LayerNorms, the pooler and any classification head are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimize.errors import InputError


@dataclass
class LayerParts:
    """Handles on one encoder layer's linear modules (torch.nn.Linear) and its norms."""

    block: Any  # the whole layer module, called alone by the reconstruction
    attention: Any  # module holding query/key/value (or q_lin/k_lin/v_lin)
    names: tuple[str, str, str]
    output: Any  # attention output projection
    attention_norm: Any  # LayerNorm after the attention residual
    ffn_in: Any
    ffn_out: Any
    ffn_norm: Any
    head_size: int

    @property
    def linears(self) -> tuple[Any, ...]:
        return (*self.qkv, self.output, self.ffn_in, self.ffn_out)

    @property
    def qkv(self) -> tuple[Any, Any, Any]:
        return tuple(getattr(self.attention, n) for n in self.names)  # type: ignore[return-value]

    @property
    def heads(self) -> int:
        return self.qkv[0].out_features // self.head_size

    @property
    def neurons(self) -> int:
        return self.ffn_in.out_features


def encoder_layers(module: Any, head_size: int) -> list[LayerParts]:
    """The layers of a BERT, RoBERTa or DistilBERT model (bare or with a head)."""
    base = getattr(module, "base_model", module)
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # bert, roberta
        return [
            LayerParts(
                layer, layer.attention.self, ("query", "key", "value"), layer.attention.output.dense,
                layer.attention.output.LayerNorm, layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm, head_size,
            )
            for layer in base.encoder.layer
        ]
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # distilbert
        return [
            LayerParts(
                layer, layer.attention, ("q_lin", "k_lin", "v_lin"), layer.attention.out_lin, layer.sa_layer_norm,
                layer.ffn.lin1, layer.ffn.lin2, layer.output_layer_norm, head_size,
            )
            for layer in base.transformer.layer
        ]
    raise InputError(f"pruning does not know the layout of {type(module).__name__}", "prune bert, roberta or distilbert models")


def linear_params(linear: Any) -> int:
    return linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)


def encoder_params(layers: list[LayerParts]) -> int:
    return sum(linear_params(lin) for layer in layers for lin in layer.linears)


def head_cost(hidden: int, head_size: int) -> int:
    """Parameters one head removes: Q/K/V columns with their biases, output-projection rows."""
    return 3 * (hidden * head_size + head_size) + hidden * head_size


def neuron_cost(hidden: int) -> int:
    return hidden + 1 + hidden


def macs_per_token(layers: list[LayerParts], seq_len: int) -> int:
    """Multiply-accumulates per token of the linear layers plus attention's two batched products."""
    total = 0
    for layer in layers:
        total += sum(lin.in_features * lin.out_features for lin in layer.linears)
        total += 2 * seq_len * layer.heads * layer.head_size
    return total


def _sliced(linear: Any, keep: Any, dim: int) -> Any:
    """A new Linear keeping rows (dim 0: output features) or columns (dim 1: inputs) ``keep``."""
    import torch

    weight = linear.weight.detach().index_select(dim, keep).clone()
    bias = None
    if linear.bias is not None:
        bias = linear.bias.detach()[keep].clone() if dim == 0 else linear.bias.detach().clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _set(owner: Any, name: str, value: Any) -> None:
    setattr(owner, name, value)


def keep_heads(module: Any, layer: LayerParts, heads: list[int]) -> None:
    """Physically keep only ``heads`` (sorted indices) of this layer."""
    import torch

    index = torch.tensor([h * layer.head_size + i for h in heads for i in range(layer.head_size)], dtype=torch.long)
    for name in layer.names:
        _set(layer.attention, name, _sliced(getattr(layer.attention, name), index, 0))
    new_output = _sliced(layer.output, index, 1)
    _replace(module, layer.output, new_output)
    layer.output = new_output
    for attribute in ("num_attention_heads", "n_heads"):
        if hasattr(layer.attention, attribute):
            setattr(layer.attention, attribute, len(heads))
    if hasattr(layer.attention, "all_head_size"):
        layer.attention.all_head_size = len(heads) * layer.head_size


def keep_neurons(module: Any, layer: LayerParts, neurons: list[int]) -> None:
    import torch

    index = torch.tensor(neurons, dtype=torch.long)
    new_in, new_out = _sliced(layer.ffn_in, index, 0), _sliced(layer.ffn_out, index, 1)
    _replace(module, layer.ffn_in, new_in)
    _replace(module, layer.ffn_out, new_out)
    layer.ffn_in, layer.ffn_out = new_in, new_out


def _replace(root: Any, old: Any, new: Any) -> None:
    """Swap submodule ``old`` for ``new`` wherever it hangs in ``root``."""
    for parent in root.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)


def keep_layers(module: Any, keep: list[int]) -> None:
    """Physically keep only the encoder layers ``keep`` (sorted indices); the config follows."""
    import torch

    base = getattr(module, "base_model", module)
    holder = base.encoder if hasattr(base, "encoder") and hasattr(base.encoder, "layer") else base.transformer
    holder.layer = torch.nn.ModuleList([holder.layer[i] for i in keep])
    for attribute in ("num_hidden_layers", "n_layers"):
        if hasattr(module.config, attribute):
            setattr(module.config, attribute, len(keep))
