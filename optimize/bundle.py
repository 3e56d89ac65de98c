"""The artifact folder: written to a staging folder beside the destination, renamed into place.

Guarantees: an existing output is replaced only with ``force`` and only if it is an
optimize bundle (or empty); an interrupted or failed write leaves the previous bundle as it
was and no staging folder behind; the swap itself runs with SIGINT/SIGTERM blocked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from optimize.errors import BundleError, InputError

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
FORMAT = "optimize-bundle/1"

#: above this, weights go to model.onnx.data (protobuf cannot hold 2 GiB in one message).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

_STAGING_MARK = ".tmp-"
_RETIRED_MARK = ".old-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(dest: Path) -> None:
    """Remove staging folders of earlier runs that died without cleaning up (SIGKILL, power loss)."""
    parent = dest.parent
    if not parent.is_dir():
        return
    prefix = f".{dest.name}{_STAGING_MARK}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def preflight(dest: Path, force: bool) -> None:
    """Refuse early, before minutes of work, whatever the final write would refuse."""
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise InputError(f"output {dest} exists and is a file", "choose a folder path for --output")
        if not force:
            raise BundleError(f"output {dest} already exists", "pass --force to replace it, or choose another --output")
        if any(dest.iterdir()) and not is_bundle(dest):
            raise BundleError(
                f"output {dest} exists and is not an optimize bundle (no {MANIFEST_FILE}); refusing to replace "
                "it even with --force",
                "choose another --output",
            )
    parent = dest.parent
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"output {dest} is inside {ancestor}, which is a file", "choose a folder path for --output")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BundleError(f"cannot write to {ancestor}: permission denied", "choose a writable --output folder")


def _os_error(exc: OSError, dest: Path) -> BundleError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return BundleError(f"disk full while writing {dest}", "free space on that disk or choose another --output")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BundleError(f"cannot write {dest}: {exc.strerror}", "choose a writable --output folder")
    return BundleError(f"could not write {dest}: {exc.strerror or exc}", "check the disk and the path")


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        if path.is_file() or path == folder:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


#: bundles this process has put in place: an interrupt that lands after the swap (delivered the
#: moment the signals are unblocked) must not be reported as "nothing was written"
COMMITTED: list[Path] = []


def _commit(staging: Path, dest: Path) -> None:
    """Swap the staging folder into place; the old bundle is retired, then removed."""
    with _signals_blocked():
        retired = None
        if dest.exists():
            retired = dest.parent / f".{dest.name}{_RETIRED_MARK}{os.getpid()}-{secrets.token_hex(3)}"
            os.rename(dest, retired)
        try:
            os.rename(staging, dest)
        except OSError:
            if retired is not None:
                os.rename(retired, dest)
            raise
        COMMITTED.append(dest)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def staged(dest: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; on normal exit it becomes ``dest``."""
    dest = Path(os.path.abspath(dest))
    preflight(dest, force)
    staging = dest.parent / f".{dest.name}{_STAGING_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        # made inside the try: an interrupt delivered the moment after mkdir still removes it
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _sweep_stale(dest)
            staging.mkdir()
        except OSError as exc:
            raise _os_error(exc, dest) from exc
        yield staging
        _fsync_tree(staging)
        _commit(staging, dest)
    except OSError as exc:
        raise _os_error(exc, dest) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_model(model: ir.Model, folder: Path) -> list[str]:
    """Write model.onnx (with model.onnx.data when the weights pass ~1.8 GB); return file names."""
    from optimize.passes.base import initializer_bytes

    path = folder / MODEL_FILE
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=EXTERNAL_DATA_FILE)
        return [MODEL_FILE, EXTERNAL_DATA_FILE]
    ir.save(model, path)
    return [MODEL_FILE]


def file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    files = {p.name: file_entry(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    content = {"format": FORMAT, **manifest, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path: a bundle as plain data, to ship between
    Ray nodes (tune's trials back to the driver, bench --each-node out to each node)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_folder_bytes(folder: Path, files: dict[str, bytes]) -> None:
    """The inverse of ``folder_bytes``: write each file under ``folder``."""
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def target(self) -> str:
        return str(self.manifest.get("target", "unknown"))


def check_recorded_file(bundle: Bundle, name: str = MODEL_FILE) -> None:
    """The file is the one the manifest records (bytes and sha256): a truncated or replaced
    model.onnx is named here, before a server starts, not met as a parse error on a replica."""
    entry = (bundle.manifest.get("files") or {}).get(name)
    if not isinstance(entry, dict):
        return  # older manifests record no files
    actual = file_entry(bundle.path / name)
    if actual["bytes"] != entry.get("bytes") or actual["sha256"] != entry.get("sha256"):
        raise BundleError(
            f"{bundle.path / name} is not the file the bundle's manifest records "
            f"({actual['bytes']:,} bytes, recorded {entry.get('bytes', 0):,}): truncated or changed since export",
            "re-create the bundle with `optimize export`",
        )


def read_bundle(path: Path) -> Bundle:
    """Open a bundle folder: it must hold a readable manifest and model.onnx."""
    if not path.exists():
        raise InputError(f"bundle {path} does not exist", "pass the --output folder of `optimize export`")
    if not path.is_dir():
        raise InputError(f"{path} is not a bundle folder", "pass the folder written by `optimize export`")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"{path} has no {MANIFEST_FILE}: not an optimize bundle", "re-create it with `optimize export`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is corrupt ({exc.__class__.__name__})", "re-create the bundle with `optimize export`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not an {FORMAT} manifest", "re-create the bundle with `optimize export`")
    if not (path / MODEL_FILE).is_file():
        raise BundleError(f"bundle {path} has no {MODEL_FILE}", "re-create the bundle with `optimize export`")
    return Bundle(path, manifest)
