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
    attention: Any  # module holding query/key/value (or q_lin/k_lin/v_lin, or one fused Wqkv)
    names: tuple[str, ...]  # Q, K and V's attribute names, or the one fused linear's
    output: Any  # attention output projection
    attention_norm: Any  # the module the residual sum after attention enters
    ffn_in: Any
    ffn_out: Any
    ffn_norm: Any | None  # the module the residual sum after the FFN enters (None: the layer's output)
    head_size: int
    gated: bool = False  # ffn_in writes [value, gate] halves (GeGLU)
    head_projections: tuple[str, ...] = ()  # more linears whose outputs are heads, cut with them
    fit_qk: bool = True

    @property
    def linears(self) -> tuple[Any, ...]:
        return (*self.qkv, self.output, self.ffn_in, self.ffn_out)

    @property
    def qkv(self) -> tuple[Any, ...]:
        return tuple(getattr(self.attention, n) for n in self.names)

    @property
    def fused_qkv(self) -> bool:
        return len(self.names) == 1

    @property
    def heads(self) -> int:
        return sum(linear.out_features for linear in self.qkv) // (3 * self.head_size)

    @property
    def ffn_copies(self) -> int:
        """Output features of ffn_in per neuron: 2 for a gated FFN (its value and its gate)."""
        return 2 if self.gated else 1

    @property
    def neurons(self) -> int:
        return self.ffn_in.out_features // self.ffn_copies

    def fitted_qkv(self) -> tuple[tuple[Any, ...], int]:
        """The Q/K/V linears the least-squares fit re-fits, and which copies of the per-head
        features they write (0 Q, 1 K, 2 V): all three, or V alone where Q and K are not fitted."""
        if self.fit_qk or self.fused_qkv:
            return self.qkv, 0
        return (self.qkv[2],), 2


def _at(root: Any, path: str) -> list[Any]:
    """The modules at a dotted ``path`` from ``root``; ``*`` expands a ModuleList."""
    found = [root]
    for part in (p for p in path.split(".") if p):
        found = [child for module in found for child in (list(module) if part == "*" else [getattr(module, part)])]
    return found


def _one(root: Any, path: str) -> Any:
    (module,) = _at(root, path)
    return module


def encoder_layers(module: Any, head_size: int) -> list[LayerParts]:
    """The layers of ``module`` (bare or with a head), where its architecture description
    (optimize/architectures.py) says its heads and neurons live; InputError where it has none.

    ALBERT shares one layer across its depth: it comes back once, pruned once for all its uses
    (its importance sums over every use; the least-squares fit sees its first use)."""
    from optimize.architectures import describe, pruning_refusal

    config = getattr(module, "config", None)
    model_type = str(getattr(config, "model_type", "")) or type(module).__name__
    settings = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config)) if config is not None else {}
    refusal = pruning_refusal(model_type, settings)
    if refusal is not None:
        raise refusal
    layout = describe(model_type).pruning
    assert layout is not None  # no refusal: the family has a layout
    base = getattr(module, "base_model", module)
    layers = []
    for layer in _at(base, layout.layers):
        attention = _one(layer, layout.attention) if layout.attention else layer
        if layout.head_input is not None:
            _cut_head_input(attention, layout.head_input)
        # a head's width as the module computes it (DeBERTa may set attention_head_size apart from hidden / heads)
        size = getattr(attention, "attention_head_size", None)
        layers.append(
            LayerParts(
                layer, attention, layout.qkv, _one(layer, layout.output), _one(layer, layout.attention_norm),
                _one(layer, layout.ffn_in), _one(layer, layout.ffn_out),
                _one(layer, layout.ffn_norm) if layout.ffn_norm else None, size if isinstance(size, int) else head_size,
                gated=layout.gated_ffn,
                head_projections=tuple(name for name in layout.head_projections if hasattr(attention, name)),
                fit_qk=not (layout.qk_shared_when and getattr(attention, layout.qk_shared_when, False)),
            )
        )
    return layers


def _cut_head_input(attention: Any, where: tuple[int, str]) -> None:
    """Give ``attention`` only its kept heads' slices of a per-head input computed once for all
    layers (MPNet's relative position bias, [batch, heads, query, key]). The kept heads are read
    from the module at each call, so the hook is a no-op until heads are cut."""
    if getattr(attention, "_optimize_head_input_hook", None) is not None:
        return
    index, name = where

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        kept = getattr(module, "_optimize_kept_heads", None)
        if kept is None:
            return None
        if name in kwargs and kwargs[name] is not None:
            kwargs = {**kwargs, name: kwargs[name].index_select(1, kept)}
        elif len(args) > index and args[index] is not None:
            args = (*args[:index], args[index].index_select(1, kept), *args[index + 1 :])
        return args, kwargs

    attention._optimize_head_input_hook = attention.register_forward_pre_hook(hook, with_kwargs=True)


def linear_params(linear: Any) -> int:
    return linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)


def encoder_params(layers: list[LayerParts]) -> int:
    return sum(linear_params(lin) for layer in layers for lin in layer.linears)


def head_cost(layer: LayerParts) -> int:
    """Parameters one head of ``layer`` removes: its Q/K/V output features with their biases,
    and its input features of the output projection."""
    rows = sum(linear_params(linear) for linear in layer.qkv) // (3 * layer.heads) * 3
    return rows + layer.head_size * layer.output.out_features


def neuron_cost(layer: LayerParts) -> int:
    """Parameters one FFN neuron of ``layer`` removes (both halves of a gated FFN's first linear)."""
    return linear_params(layer.ffn_in) // layer.neurons + layer.ffn_out.out_features


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


def unit_index(units: list[int], unit: int, copies: int, width: int) -> Any:
    """Output features to keep of a linear that writes ``copies`` blocks of ``width`` side by
    side (Q, K and V fused; a gated FFN's value and gate), for the kept ``units`` of ``unit``
    features each."""
    import torch

    return torch.tensor([c * width + u * unit + i for c in range(copies) for u in units for i in range(unit)], dtype=torch.long)


def keep_heads(module: Any, layer: LayerParts, heads: list[int]) -> None:
    """Physically keep only ``heads`` (sorted indices of the layer's current heads)."""
    import torch

    width = layer.heads * layer.head_size
    index = unit_index(heads, layer.head_size, 1, width)
    qkv_index = unit_index(heads, layer.head_size, 3, width) if layer.fused_qkv else index
    for name in layer.names:
        _set(layer.attention, name, _sliced(getattr(layer.attention, name), qkv_index, 0))
    for name in layer.head_projections:
        _set(layer.attention, name, _sliced(getattr(layer.attention, name), index, 0))
    new_output = _sliced(layer.output, index, 1)
    _replace(module, layer.output, new_output)
    layer.output = new_output
    for attribute in ("num_attention_heads", "n_heads"):
        if hasattr(layer.attention, attribute):
            setattr(layer.attention, attribute, len(heads))
    if hasattr(layer.attention, "all_head_size"):
        layer.attention.all_head_size = len(heads) * layer.head_size
    if getattr(layer.attention, "_optimize_head_input_hook", None) is not None:
        previous = getattr(layer.attention, "_optimize_kept_heads", None)
        kept = torch.tensor(heads, dtype=torch.long)
        # indices into the full input: a second cut selects among the heads the first one kept
        layer.attention._optimize_kept_heads = previous[kept] if previous is not None else kept


def keep_neurons(module: Any, layer: LayerParts, neurons: list[int]) -> None:
    index = unit_index(neurons, 1, layer.ffn_copies, layer.neurons)
    new_in = _sliced(layer.ffn_in, index, 0)
    new_out = _sliced(layer.ffn_out, unit_index(neurons, 1, 1, layer.neurons), 1)
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
    """Physically keep only the encoder layers ``keep`` (sorted indices), found where the
    family's description says its layers are; the config follows."""
    import torch

    from optimize.architectures import describe

    layout = describe(str(getattr(module.config, "model_type", ""))).pruning
    if layout is None or layout.shared or not layout.layers.endswith(".*"):
        raise InputError(
            "--drop-layers is not available for this architecture: its layers are not one list of distinct layers",
            "export without --drop-layers",
        )
    base = getattr(module, "base_model", module)
    *parents, name = layout.layers[: -len(".*")].split(".")
    holder = _one(base, ".".join(parents))
    old = getattr(holder, name)
    setattr(holder, name, torch.nn.ModuleList([old[i] for i in keep]))
    count = len(old)
    for attribute in ("num_hidden_layers", "n_layers"):
        if hasattr(module.config, attribute):
            setattr(module.config, attribute, len(keep))
    # per-layer settings (ModernBERT's local or global attention) follow the layers kept
    layer_types = getattr(module.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == count:
        module.config.layer_types = [layer_types[i] for i in keep]
