"""A graph that takes raw text (``--with-tokenizer``): the tokenizer in front of the model.

onnxruntime-extensions' ``BertTokenizer`` op (its attributes made from the Hugging Face tokenizer
by the library's own ``gen_processing_models``) tokenizes one string per call: given two it
encodes them as a sentence pair, so a batch cannot go through it in one node. A ``Loop`` over the
batch calls it once per text, truncates at ``max_length`` as the Python tokenizer does (standard
``Slice``: the op's own ``max_length`` corrupts the heap in extensions 0.15), pads each
row to ``max_length`` with standard ``Pad``, and the rows are then cut to the batch's longest
(standard ``ReduceSum``/``ReduceMax``/``Slice``): the model sees exactly what the Python tokenizer
with ``padding="longest"`` gives it. The model's outputs are kept, and ``attention_mask`` is added
as an output so a caller can pool over real tokens. Any ONNX Runtime binding runs the graph once
the extensions library is registered (``SessionOptions.register_custom_ops_library``).

Only WordPiece (BERT-style) tokenizers are taken: the extensions' byte-level BPE and SentencePiece
ops have other batch and special-token rules that nothing here checks yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from optimize.errors import InputError

TEXT_INPUT = "text"
EXTENSIONS = "onnxruntime-extensions"
CONTRIB_DOMAIN = "ai.onnx.contrib"


def refusal(tokenizer: Any, task: str) -> str | None:
    """Why this tokenizer or task cannot go into the graph (None: it can)."""
    from optimize.tasks import get_task

    if not get_task(task).raw_text:
        return f"a {task} bundle answers with character spans (or takes two texts), which a raw-text graph does not give"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    if model != "WordPiece":
        return f"the model's tokenizer is {model}; --with-tokenizer takes WordPiece (BERT-style) tokenizers"
    return None


def require_extensions() -> None:
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError as exc:
        raise InputError(
            "--with-tokenizer needs onnxruntime-extensions (its tokenizer ops), which is not installed",
            "pip install 'optimize[tokenizer]'",
        ) from exc


def _strip_accents(tokenizer: Any) -> bool:
    """BERT's rule: accents are stripped when lower-casing unless strip_accents says otherwise
    (the extensions' converter reads only an explicit strip_accents and so kept them)."""
    lower = bool(tokenizer.init_kwargs.get("do_lower_case", getattr(tokenizer, "do_lower_case", False)))
    explicit = tokenizer.init_kwargs.get("strip_accents")
    return lower if explicit is None else bool(explicit)


def tokenizer_node_attributes(tokenizer: Any) -> list[Any]:
    """The BertTokenizer op's attributes, as onnxruntime-extensions converts the tokenizer."""
    from onnxruntime_extensions import gen_processing_models

    # no max_length: with it, extensions 0.15's BertTokenizer corrupts the heap (glibc aborts within
    # a few dozen calls, at any text length); the graph truncates with standard ops instead
    pre, _ = gen_processing_models(tokenizer, pre_kwargs={"strip_accents": int(_strip_accents(tokenizer))})
    (node,) = [n for n in pre.graph.node if n.op_type == "BertTokenizer"]
    return list(node.attribute)


def tokenizer_graph(tokenizer: Any, max_length: int, opset: int, input_names: tuple[str, ...]) -> Any:  # -> onnx.ModelProto
    """text [batch] -> input_ids, attention_mask (and token_type_ids) int64 [batch, longest]."""
    import onnx
    from onnx import TensorProto, helper

    pad_id = int(tokenizer.pad_token_id or 0)

    def const(name: str, values: list[int]) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))

    tokenize = helper.make_node(
        "BertTokenizer", ["tok_one"], ["tok_ids", "tok_types", "tok_mask", "tok_offsets"], name="tok_bert", domain=CONTRIB_DOMAIN
    )
    tokenize.attribute.extend(tokenizer_node_attributes(tokenizer))
    body = helper.make_graph(
        [
            helper.make_node("Gather", [TEXT_INPUT, "tok_i"], ["tok_string"], axis=0),
            const("tok_axis0", [0]),
            helper.make_node("Unsqueeze", ["tok_string", "tok_axis0"], ["tok_one"]),
            tokenize,
            # truncation as the Python tokenizer does it: the first max_length - 1 tokens and the
            # final [SEP] (a no-op when the text fits); n = the row's full length
            helper.make_node("Shape", ["tok_ids"], ["tok_full"]),
            const("tok_max", [max_length]),
            const("tok_one_1d", [1]),
            helper.make_node("Min", ["tok_full", "tok_max"], ["tok_length"]),
            helper.make_node("Sub", ["tok_length", "tok_one_1d"], ["tok_head_end"]),
            helper.make_node("Sub", ["tok_full", "tok_one_1d"], ["tok_last"]),
            *[
                node
                for raw, cut in (("tok_ids", "tok_cut_ids"), ("tok_mask", "tok_cut_mask"), ("tok_types", "tok_cut_types"))
                for node in (
                    helper.make_node("Slice", [raw, "tok_axis0", "tok_head_end", "tok_axis0"], [f"{cut}_head"]),
                    helper.make_node("Slice", [raw, "tok_last", "tok_full", "tok_axis0"], [f"{cut}_tail"]),
                    helper.make_node("Concat", [f"{cut}_head", f"{cut}_tail"], [cut], axis=0),
                )
            ],
            helper.make_node("Sub", ["tok_max", "tok_length"], ["tok_missing"]),
            helper.make_node("Concat", ["tok_axis0", "tok_missing"], ["tok_pads"], axis=0),
            helper.make_node("Constant", [], ["tok_pad_id"], value=helper.make_tensor("tok_pad_id", TensorProto.INT64, [], [pad_id])),
            helper.make_node("Constant", [], ["tok_zero"], value=helper.make_tensor("tok_zero", TensorProto.INT64, [], [0])),
            helper.make_node("Pad", ["tok_cut_ids", "tok_pads", "tok_pad_id"], ["tok_row_ids"]),
            helper.make_node("Pad", ["tok_cut_mask", "tok_pads", "tok_zero"], ["tok_row_mask"]),
            helper.make_node("Pad", ["tok_cut_types", "tok_pads", "tok_zero"], ["tok_row_types"]),
            helper.make_node("Identity", ["tok_cond_in"], ["tok_cond_out"]),
        ],
        "tokenize_one",
        [helper.make_tensor_value_info("tok_i", TensorProto.INT64, []), helper.make_tensor_value_info("tok_cond_in", TensorProto.BOOL, [])],
        [
            helper.make_tensor_value_info("tok_cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("tok_row_ids", TensorProto.INT64, [max_length]),
            helper.make_tensor_value_info("tok_row_mask", TensorProto.INT64, [max_length]),
            helper.make_tensor_value_info("tok_row_types", TensorProto.INT64, [max_length]),
        ],
    )
    outputs = {"input_ids": "tok_all_ids", "attention_mask": "tok_all_mask", "token_type_ids": "tok_all_types"}
    nodes = [
        helper.make_node("Shape", [TEXT_INPUT], ["tok_batch_1d"]),
        const("tok_axis0_outer", [0]),
        helper.make_node("Squeeze", ["tok_batch_1d", "tok_axis0_outer"], ["tok_batch"]),
        helper.make_node("Loop", ["tok_batch", ""], list(outputs.values()), body=body, name="tok_loop"),
        const("tok_axis1", [1]),
        helper.make_node("ReduceSum", ["tok_all_mask", "tok_axis1"], ["tok_lengths"], keepdims=0),
        helper.make_node("ReduceMax", ["tok_lengths"], ["tok_longest"], keepdims=1),
        const("tok_start", [0]),
    ]
    wanted = [name for name in outputs if name in input_names]
    for name in wanted:
        nodes.append(helper.make_node("Slice", [outputs[name], "tok_start", "tok_longest", "tok_axis1"], [name]))
    graph = helper.make_graph(
        nodes,
        "tokenizer",
        [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in wanted],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB_DOMAIN, 1)], ir_version=onnx.IR_VERSION
    )


def with_tokenizer(model: ir.Model, tokenizer: Any, input_names: tuple[str, ...], max_length: int) -> tuple[ir.Model, dict[str, Any]]:
    """The model behind the tokenizer graph: input ``text`` [batch], the model's outputs and
    ``attention_mask``."""
    import onnx
    from onnx import TensorProto, helper

    proto = ir.to_proto(model)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    front = tokenizer_graph(tokenizer, max_length, opset, input_names)
    front.ir_version = proto.ir_version
    for entry in proto.opset_import:  # merge_models wants the same opsets on both sides
        if entry.domain not in ("", "ai.onnx", CONTRIB_DOMAIN):
            front.opset_import.append(helper.make_opsetid(entry.domain, entry.version))
    merged = onnx.compose.merge_models(front, proto, io_map=[(name, name) for name in input_names])
    if "attention_mask" in input_names and "attention_mask" not in [o.name for o in merged.graph.output]:
        merged.graph.output.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]))
    stats = {"tokenizer": type(tokenizer).__name__, "op": f"{CONTRIB_DOMAIN}::BertTokenizer", "max_length": max_length, "strip_accents": _strip_accents(tokenizer)}
    return ir.from_proto(merged), stats


def texts_into(batches: list[dict[str, np.ndarray]], texts: tuple[str, ...] | list[str], batch_size: int) -> None:
    """Each tokenized batch also carries its texts (``text``), in the order token_batches cut them."""
    for index, feeds in enumerate(batches):
        feeds[TEXT_INPUT] = np.array(list(texts[index * batch_size : (index + 1) * batch_size]), dtype=object)
