"""The console command's first code: Ctrl-C (or SIGTERM) is handled before the CLI's modules load.

Importing the CLI (typer, rich, the project's config) takes a fifth of a second on an idle machine
and seconds on a busy one. A signal landing in that window used to surface as Python's own
KeyboardInterrupt traceback. Until ``optimize.cli.main`` runs and takes over (it turns an interrupt
into its one line and exit 130), this module answers a signal with the same line and exit code:
nothing has been read or written yet, so there is nothing to clean up.
"""

from __future__ import annotations

import os
import signal

from optimize.errors import INTERRUPTED, TERMINATED


def _interrupted_while_starting(signum: int, frame: object) -> None:
    line = TERMINATED if signum == signal.SIGTERM else INTERRUPTED
    os.write(2, f"error: {line}\n".encode())
    os._exit(130)  # nothing to unwind: no module of the command has run


def run() -> int:
    """Entry point of the ``optimize`` console script and of ``python -m optimize``."""
    # A signal the parent ignores (a shell's background job ignores SIGINT) stays ignored, as Python does.
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _interrupted_while_starting)
    from optimize.cli import main

    # main installs its SIGTERM handler first thing; Ctrl-C goes back to what it was (Python's
    # KeyboardInterrupt, which main turns into its one line)
    signal.signal(signal.SIGINT, sigint)
    return main()
