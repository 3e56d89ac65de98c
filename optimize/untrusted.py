"""Opening ONNX files from elsewhere: validate before any runtime or parser trusts them.

ONNX external data has had path-traversal CVEs (CVE-2022-25882, CVE-2024-27318): a tensor's
``location`` can point outside the model's folder or through a symlink. Here every external
reference must be a plain relative path to a regular file inside the model's folder, within
that file's size, and the graph must pass the ONNX checker, before onnx_ir or ONNX Runtime
reads a byte of tensor data. Two things the checker lets through are refused here too, because
libraries downstream crash on them: string fields that are not UTF-8 (protobuf hands proto2
strings back as bytes) and tensors holding more data than their dims say (too little, the checker refuses).

A refusal is an InputError; a library failure on a file that passed every check is an
InputError marked ``internal`` (a gap in these checks, or a bug).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from optimize.errors import InputError

MAX_MODEL_BYTES = 2**31 - 1


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip().splitlines() or [exc.__class__.__name__])[0].split())[:200]


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _all_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def _repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 dropped ``label``; older ones lack ``is_repeated``
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _undecodable_strings(message: Message) -> Iterator[str]:
    """Names of string fields holding bytes that are not UTF-8 (what upb returns for them)."""
    for field, value in message.ListFields():
        values = value if _repeated(field) else (value,)
        if field.type == FieldDescriptor.TYPE_STRING:
            if any(isinstance(v, bytes) for v in values):
                yield field.full_name
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.name != "TensorProto":
            for child in values:
                yield from _undecodable_strings(child)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:  # a tensor: its name, not its data
            for tensor in values:
                if isinstance(tensor.name, bytes):
                    yield field.full_name + ".name"


#: bits per element where it is not the numpy item size (ONNX packs these in raw_data)
_PACKED_BITS = {
    onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
    **{getattr(onnx.TensorProto, n): 2 for n in ("INT2", "UINT2") if hasattr(onnx.TensorProto, n)},
    **{getattr(onnx.TensorProto, n): 6 for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(onnx.TensorProto, n)},
}


def check_tensor_sizes(model: onnx.ModelProto, name: str) -> None:
    """Each in-memory tensor holds the number of elements its dims promise (numpy's reshape in
    every library downstream raises on a truncated or padded tensor)."""
    fix = "the file is corrupt or truncated; re-export it or copy it again"
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
            continue
        if any(d < 0 for d in tensor.dims):
            raise InputError(f"{name}: tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}", fix)
        elements = math.prod(tensor.dims)
        try:
            if tensor.HasField("raw_data"):
                bits = _PACKED_BITS.get(tensor.data_type) or 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
                if len(tensor.raw_data) != math.ceil(elements * bits / 8):
                    raise ValueError(f"{len(tensor.raw_data)} bytes of data")
            else:  # typed fields: small tensors; let onnx count them
                onnx.numpy_helper.to_array(tensor)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{name}: tensor {tensor.name!r} does not hold {elements} elements of type "
                f"{onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in onnx.TensorProto.DataType.values() else tensor.data_type} "
                f"(dims {list(tensor.dims)}; {_one_line(exc)})",
                fix,
            ) from exc


def check_external_data(model: onnx.ModelProto, folder: Path, name: str) -> int:
    """Every external tensor stays inside ``folder``; returns how many external tensors there are."""
    root = folder.resolve()
    count = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        count += 1
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        fix = "only open ONNX files whose external data lies beside them, inside their own folder"
        if not location or os.path.isabs(location) or ".." in Path(location).parts or "\\" in location:
            raise InputError(f"{name}: tensor {tensor.name!r} points to external data outside its folder ({location!r})", fix)
        candidate = folder / location
        current = folder
        for part in Path(location).parts:  # no link anywhere on the way
            current = current / part
            if current.is_symlink():
                raise InputError(f"{name}: external data of tensor {tensor.name!r} goes through a symlink ({location})", fix)
        resolved = candidate.resolve()
        if root not in resolved.parents:
            raise InputError(f"{name}: tensor {tensor.name!r} points to external data outside its folder ({location!r})", fix)
        if not resolved.is_file():
            raise InputError(
                f"{name}: external data file {location} of tensor {tensor.name!r} is missing",
                "copy the .data file that belongs beside the model",
            )
        size = resolved.stat().st_size
        try:
            offset = int(entries.get("offset", "0") or 0)
            length = int(entries.get("length", "0") or 0)
        except ValueError as exc:
            raise InputError(f"{name}: tensor {tensor.name!r} has a malformed external-data offset or length", fix) from exc
        if offset < 0 or length < 0 or offset + length > size:
            raise InputError(
                f"{name}: tensor {tensor.name!r} reads past the end of {location}",
                "the external data file is truncated or does not belong to this model",
            )
    return count


def load_untrusted(path: Path) -> ir.Model:
    """Parse, contain and check an ONNX file; only then build the IR from it."""
    name = str(path)
    if not path.exists():
        raise InputError(f"ONNX file {name} does not exist", "check the path")
    if path.is_dir():
        raise InputError(f"{name} is a folder, not an ONNX file", "pass a bundle folder or a .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"ONNX file {name} is empty", "re-export the model or copy it again")
    if size > MAX_MODEL_BYTES:
        raise InputError(f"ONNX file {name} is larger than 2 GiB", "large models keep their weights in external data")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise InputError(
            f"{name} is not a valid ONNX file (cannot parse it: {_one_line(exc)})",
            "the file is corrupt or truncated; re-export it or copy it again",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the parser itself broke
        raise InputError(
            f"{name} could not be parsed: {_one_line(exc)}", "the file is corrupt or truncated; re-export it", internal=True
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{name} is not a valid ONNX file (no graph)", "the file is corrupt or truncated; re-export it")
    bad_strings = sorted(set(_undecodable_strings(proto)))
    if bad_strings:
        raise InputError(
            f"{name} is not a valid ONNX file (text that is not UTF-8 in {', '.join(bad_strings[:3])})",
            "the file is corrupt; re-export it or copy it again",
        )
    check_external_data(proto, path.parent, name)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{name} fails the ONNX checker: {_one_line(exc)}", "re-export the model") from exc
    except Exception as exc:  # noqa: BLE001 - the checker itself broke: not a verdict on the file
        raise InputError(f"{name} could not be checked: {_one_line(exc)}", "re-export the model", internal=True) from exc
    try:
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto)):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - containment and sizes were checked above: a gap in them, or a bug
        raise InputError(f"{name} could not be read: {_one_line(exc)}", "re-export the model", internal=True) from exc
    check_tensor_sizes(proto, name)
    try:
        return ir.from_proto(proto)
    except Exception as exc:  # noqa: BLE001 - the file passed every check above: a gap in them, or a bug
        raise InputError(f"{name} could not be read: {_one_line(exc)}", "re-export the model", internal=True) from exc
