"""Environments the interoperability tests run the other side in, made once and reused.

Optimum (optimum-onnx 0.1.0) needs transformers<4.58 and this project runs transformers 5, so
Optimum cannot share the test interpreter: it gets a venv of its own under ``.venv-optimum/``
(git-ignored; one per test interpreter) with only Optimum, transformers 4 and what they need beyond the test
interpreter's packages. torch, onnxruntime and numpy come from the test interpreter's
site-packages through a ``.pth`` line placed after the venv's own, so nothing large is installed
twice (about 10 s with pip's cache). The JavaScript side is ``tests/js/package.json`` installed
with npm into ``.cache/js/`` (git-ignored); onnxruntime-node's install script only fetches CUDA
binaries, so it is skipped (``--ignore-scripts``): the CPU binaries are in its npm package.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPTIMUM_VENV = REPO / ".venv-optimum"
OPTIMUM_REQUIREMENTS = ("optimum-onnx==0.1.0", "transformers>=4.46,<4.58")
JS_SOURCE = REPO / "tests" / "js"
JS_CACHE = REPO / ".cache" / "js"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One maker at a time (pytest-xdist workers, two sessions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(done: subprocess.CompletedProcess) -> str:
    return " ".join(((done.stderr or "") + (done.stdout or "")).split()[-60:])


def _base_site_packages() -> list[str]:
    """Every site-packages folder the test interpreter imports from (a venv layered on another
    through a .pth has more than one; a .pth named in a .pth line is not read)."""
    folders = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))]
    return [p for p in dict.fromkeys(folders) if Path(p).is_dir()]


def optimum_python() -> Path:
    """The venv's interpreter, made (or remade, when the requirements or the base changed) first.
    One venv per base interpreter, so two interpreters never remake each other's."""
    base = json.dumps({"base": sys.executable, "site": _base_site_packages(), "requirements": OPTIMUM_REQUIREMENTS})
    venv = OPTIMUM_VENV / hashlib.sha256(base.encode()).hexdigest()[:12]
    python = venv / "bin" / "python"
    marker = venv / ".made-for"
    with locked(REPO / ".cache" / "venv-optimum.lock"):
        if python.is_file() and marker.is_file() and marker.read_text() == base:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True)
        # after the venv's own site-packages: its transformers 4 shadows the base's transformers 5
        (Path(own.stdout.strip()) / "zz-base-site-packages.pth").write_text("".join(f"{p}\n" for p in _base_site_packages()))
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *OPTIMUM_REQUIREMENTS],
            capture_output=True, text=True, timeout=900,
        )
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"could not install {' '.join(OPTIMUM_REQUIREMENTS)} into {venv}: {_tail(done)}")
        marker.write_text(base)
    return python


def node_tools() -> str | None:
    """None where node and npm are both on PATH, else why not."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None


def js_folder() -> Path:
    """.cache/js with tests/js's script and its packages installed."""
    wanted = (JS_SOURCE / "package.json").read_text()
    with locked(REPO / ".cache" / "js.lock"):
        JS_CACHE.mkdir(parents=True, exist_ok=True)
        for item in JS_SOURCE.iterdir():
            shutil.copy2(item, JS_CACHE / item.name)
        marker = JS_CACHE / ".installed-for"
        if not (marker.is_file() and marker.read_text() == wanted):
            done = subprocess.run(
                ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=JS_CACHE, capture_output=True, text=True, timeout=900,
            )
            if done.returncode != 0:
                raise RuntimeError(f"npm install in {JS_CACHE} failed: {_tail(done)}")
            marker.write_text(wanted)
    return JS_CACHE
