"""The project's exceptions: one per phase, each carrying the fix.

Every error a user can provoke is one of these. The CLI prints ``str(error)`` as one
line and exits with ``error.exit_code``; nothing else reaches the terminal.

Two kinds travel under the same classes and print the same way: a *refusal*, raised where the
project's own checks said no (a missing file, a graph the ONNX checker rejects), and an
*internal failure*, where a pass or a library raised something unexpected and the project
wrapped it on the way out (``internal=True``; the library's exception is ``__cause__``). The
CLI treats both alike; tests tell them apart, so that a bug wrapped into a tidy line is never
counted as a correct refusal.
"""

from __future__ import annotations


class OptimizeError(Exception):
    """Base class. ``problem`` says what is wrong, ``fix`` what the user can do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None, *, internal: bool = False) -> None:
        self.problem = problem.strip().rstrip(".")
        self.fix = fix.strip().rstrip(".") if fix else None
        #: True when this wraps an unexpected exception from a pass or a library (see the module doc)
        self.internal = internal
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as one line: problem, then fix, with newlines folded."""
        text = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(text.split())


class InputError(OptimizeError):
    """A bad argument or input file: a missing model, an unknown target, empty text."""

    exit_code = 2


class ExportError(OptimizeError):
    """The model could not be captured into a valid ONNX graph."""

    exit_code = 3


class PassError(OptimizeError):
    """A graph pass failed or did not deliver what it promised."""

    exit_code = 4


class BuildError(OptimizeError):
    """A runtime could not load or build the artifact (ORT session, TensorRT engine)."""

    exit_code = 5


class ParityError(OptimizeError):
    """The artifact does not compute what the PyTorch model computes within the target's tolerance."""

    exit_code = 6


class BundleError(OptimizeError):
    """The artifact folder could not be written or read: exists, unwritable, disk full, corrupt."""

    exit_code = 7


class Interrupted(OptimizeError):
    """SIGINT or SIGTERM arrived; whatever was being written has been rolled back."""

    exit_code = 130


#: what an interrupted command says: the staging folder is rolled back, the old bundle untouched
INTERRUPTED = "interrupted; nothing was written and any previous bundle is intact"
TERMINATED = "terminated by SIGTERM; nothing was written and any previous bundle is intact"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised the way Python raises Ctrl-C: as a BaseException. Raised as an Exception,
    it was swallowed by libraries' own ``except Exception`` (torch.onnx's op registry logged it
    with a traceback and carried on, finishing an export the user had terminated)."""


def interrupt_behind(exc: BaseException) -> Interrupted | None:
    """The Interrupted that a library wrapped in its own error (torch.export and onnxscript
    re-raise what they catch), so that a catch-all for library failures never mistakes Ctrl-C
    or SIGTERM for one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        if isinstance(current, KeyboardInterrupt):
            return Interrupted(TERMINATED if isinstance(current, Terminated) else INTERRUPTED)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the command line)",
    2: "bad input: arguments, model reference, data files (InputError)",
    3: "export failed: the model could not become a valid ONNX graph (ExportError)",
    4: "a graph pass failed or did not deliver what it promised (PassError)",
    5: "a runtime could not load or build the artifact (BuildError)",
    6: "parity out of the target's tolerance: no bundle written (ParityError)",
    7: "the bundle could not be written or read (BundleError)",
    130: "interrupted by SIGINT/SIGTERM: previous output left intact (Interrupted)",
}
