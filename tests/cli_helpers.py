"""Running the installed ``optimize`` command the way a user does."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def optimize(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> Result:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("OPTIMIZE_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "optimize", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: Result, *fragments: str, code: int | None = None) -> str:
    """Non-zero exit, no traceback, one `error:` line on stderr holding every fragment."""
    assert result.code != 0, result.stdout
    if code is not None:
        assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error:"), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def free_port() -> int:
    """A free port where no program is handed one by chance: below Ray's worker ports
    (10002-19999) and the kernel's ephemeral range (from 32768). One from bind(("", 0)), the
    ephemeral range, was once taken by a Ray process's gRPC server (HTTP/2 answered /health)
    between the test's pick and the server's own bind."""
    picks = random.Random()
    for _ in range(500):
        port = picks.randrange(2000, 6000)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))  # every interface: HAProxy listens on them all
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 2000 and 5999")
