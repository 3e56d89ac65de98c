"""Data files from ../shared (beside the checkout): skipped where absent, except under CI.

A developer's checkout may lack ../shared and the tests that read it skip there. CI's layout
has it, so under CI (``CI=true``, as GitHub Actions and most runners set it) a missing file is
a failure: otherwise a moved or renamed file would silently turn those tests into skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_file(path: Path) -> Path:
    """``path`` if it is a file; else skip the test, or fail it under CI."""
    if path.is_file():
        return path
    problem = f"{path} is not beside the checkout"
    if on_ci():
        pytest.fail(f"{problem}, and CI=true: CI's layout must hold ../shared/data", pytrace=False)
    pytest.skip(problem)
