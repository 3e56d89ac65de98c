"""The TensorRT timing cache a bundle carries: reused only on the GPU and TensorRT that made it.

A timing cache holds one GPU's kernel timings. Polygraphy would load whatever file it is given
(``CreateConfig(load_timing_cache=...)``) and, when saving, merge the old file into the new cache
with ``ignore_mismatch=True`` (``EngineBytesFromNetwork(save_timing_cache=...)``), so a cache
copied from another GPU would be carried forward, mixed. The manifest therefore records where
the cache was made (``origin``); a rebuild elsewhere, or of a cache of unknown origin, leaves the
old file out with a one-line note and saves a fresh one.

Polygraphy also guards the file with ``timing.cache.lock`` (``util.LockFile``) and leaves that
lock behind: it is no part of a bundle, nor of its manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimize.bundle import ENGINE_FILE, MANIFEST_FILE, TIMING_CACHE_FILE

LOCK_FILE = f"{TIMING_CACHE_FILE}.lock"
UNKNOWN = "unknown"


def origin(tensorrt_version: str, gpus: list[dict[str, Any]]) -> dict[str, str]:
    """Where a cache built now is made: the first visible GPU's name and the TensorRT version."""
    name = str(gpus[0].get("name") or UNKNOWN) if gpus else UNKNOWN
    return {"gpu": name, "tensorrt": tensorrt_version}


def foreign(recorded: dict[str, Any] | None, here: dict[str, str]) -> str | None:
    """The one-line note saying why the bundle's timing cache is not reused here (None: reuse it)."""
    if not recorded or UNKNOWN in (recorded.get("gpu", UNKNOWN), here["gpu"]):
        return f"{TIMING_CACHE_FILE} ignored: no record says it was made on this GPU ({here['gpu']}); a fresh one is saved"
    if (recorded.get("gpu"), recorded.get("tensorrt")) != (here["gpu"], here["tensorrt"]):
        return (
            f"{TIMING_CACHE_FILE} ignored: it was made on {recorded.get('gpu')} with TensorRT {recorded.get('tensorrt')}, "
            f"this is {here['gpu']} with TensorRT {here['tensorrt']}; a fresh one is saved"
        )
    return None


def carried_files(bundle: Path, keep_timing_cache: bool) -> list[Path]:
    """The files a rebuild starts from: all but the engine and the manifest (both written anew),
    Polygraphy's lock, and the timing cache unless it is reused."""
    dropped = {ENGINE_FILE, MANIFEST_FILE, LOCK_FILE} | (set() if keep_timing_cache else {TIMING_CACHE_FILE})
    return sorted(p for p in bundle.iterdir() if p.is_file() and p.name not in dropped)


def drop_lock(folder: Path) -> None:
    """Remove the lock Polygraphy leaves beside the cache it loaded or saved."""
    (folder / LOCK_FILE).unlink(missing_ok=True)
