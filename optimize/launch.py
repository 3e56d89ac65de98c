"""The console command's first code: Ctrl-C (or SIGTERM) is handled before the CLI's modules load,
and again while a command loads the native libraries it runs on.

Importing the CLI (typer, rich, the project's config) takes a fifth of a second on an idle machine
and seconds on a busy one. A signal landing in that window used to surface as Python's own
KeyboardInterrupt traceback. Until ``optimize.cli.main`` runs and takes over (it turns an interrupt
into its one line and exit 130), this module answers a signal with the same line and exit code:
nothing has been read or written yet, so there is nothing to clean up.

A command's first act is importing torch, ONNX, ONNX Runtime and the like, seconds more. A
KeyboardInterrupt raised there, inside a native module's initialisation, cannot unwind through its
C++: seen as ``terminate called after throwing an instance of 'pybind11::error_already_set'`` and
death by SIGABRT, or as ``ImportError: initialization failed``. Nothing has been written then
either, so ``native_imports`` answers a signal the same way while they load.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import NoReturn

from optimize.errors import INTERRUPTED, TERMINATED

#: what a command that runs a PyTorch model and its ONNX graph loads first
MODEL_LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch", "tokenizers", "safetensors", "transformers", "onnxscript")
#: what a command that only runs a bundle loads first (no PyTorch: a second or more saved)
RUNTIME_LIBRARIES = ("numpy", "onnx", "onnxruntime", "tokenizers")
#: what a command's checks of its arguments load before PyTorch (the project's config, targets and bundles)
PREFLIGHT_LIBRARIES = (*RUNTIME_LIBRARIES, "onnx_ir")


def _interrupted_while_starting(signum: int, frame: object) -> None:
    line = TERMINATED if signum == signal.SIGTERM else INTERRUPTED
    os.write(2, f"error: {line}\n".encode())
    os._exit(130)  # nothing to unwind: no module of the command has run


@contextlib.contextmanager
def exiting_on_signal() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM end the process at once with the one line and exit 130
    (a signal the parent ignores stays ignored); the handlers before it come back after it."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _interrupted_while_starting)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def native_imports(names: tuple[str, ...] = MODEL_LIBRARIES) -> None:
    """Import ``names`` with signals ending the process at once: call it first in a command,
    before anything is read or written."""
    with exiting_on_signal():
        for name in names:
            importlib.import_module(name)


def run() -> int:
    """Entry point of the ``optimize`` console script and of ``python -m optimize``."""
    # SIGTERM goes back to its default until main installs its own handler first thing; Ctrl-C
    # goes back to what it was (Python's KeyboardInterrupt, which main turns into its one line)
    with exiting_on_signal():
        from optimize.cli import main
    return main()


def exit_interrupted() -> NoReturn:
    """Exit 130 after an interrupt that the command has answered, for ``python -m optimize``.

    Under ``-m`` CPython exits by SIGINT (a parent sees -2) when a KeyboardInterrupt was ever
    raised out of an ``exec`` of a string, even one caught and answered since: torch's lazy imports
    and dataclasses run such code, so a Ctrl-C there ended as -2 after the one line. The flag that
    does it is only read after the exit handlers, so they run here first and the process then ends
    with the code the command chose. The ``optimize`` script (run as a file) is not affected."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(130)
