"""Opening ONNX files from elsewhere: validate before any runtime or parser trusts them.

ONNX external data has had path-traversal CVEs (CVE-2022-25882, CVE-2024-27318): a tensor's
``location`` can point outside the model's folder or through a symlink. Here every external
reference must be a plain relative path to a regular file inside the model's folder, within
that file's size, and the graph must pass the ONNX checker, before onnx_ir or ONNX Runtime
reads a byte of tensor data.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from optimize.errors import InputError

MAX_MODEL_BYTES = 2**31 - 1


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip().splitlines() or [exc.__class__.__name__])[0].split())[:200]


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _all_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


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
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ...
        raise InputError(
            f"{name} is not a valid ONNX file (cannot parse it: {_one_line(exc)})",
            "the file is corrupt or truncated; re-export it or copy it again",
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{name} is not a valid ONNX file (no graph)", "the file is corrupt or truncated; re-export it")
    check_external_data(proto, path.parent, name)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:  # noqa: BLE001 - ValidationError and C++ errors alike
        raise InputError(f"{name} fails the ONNX checker: {_one_line(exc)}", "re-export the model") from exc
    try:
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto)):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(path.parent))
        return ir.from_proto(proto)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{name} could not be read: {_one_line(exc)}", "re-export the model") from exc
