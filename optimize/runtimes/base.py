"""The runner contract every backend implements (after Polygraphy's ``BaseRunner``).

A runner owns its backend's lifetime (``activate`` / ``deactivate``), takes a dict of numpy
feeds and returns a dict of numpy outputs, and times each call itself.
"""

from __future__ import annotations

import abc
import time
from types import TracebackType

import numpy as np

Feeds = dict[str, np.ndarray]


class Runner(abc.ABC):
    name: str = "runner"

    def __init__(self) -> None:
        self.active = False
        self.last_inference_seconds = 0.0

    @property
    @abc.abstractmethod
    def input_names(self) -> tuple[str, ...]: ...

    @property
    @abc.abstractmethod
    def output_names(self) -> tuple[str, ...]: ...

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    @abc.abstractmethod
    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]: ...

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Run once on the feeds this runner takes (extra keys are ignored); timed."""
        if not self.active:
            self.activate()
        selected = {name: feeds[name] for name in self.input_names}
        started = time.perf_counter()
        outputs = self._infer(selected)
        self.last_inference_seconds = time.perf_counter() - started
        return outputs

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()
