"""The PyTorch fp32 reference: the model as the user has it, run eagerly."""

from __future__ import annotations

import numpy as np

from optimize.exporter.resolve import LoadedModel
from optimize.runtimes.base import Feeds, Runner


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.loaded.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.loaded.outputs

    def _infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).long() for k, v in feeds.items()}
        with torch.inference_mode():
            result = self.loaded.module(**tensors, return_dict=True)
        return {name: result[name].float().numpy() for name in self.loaded.outputs}

    def run_callable(self, feeds: Feeds):  # -> Callable[[], object]
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(feeds[k])).long() for k in self.input_names}
        module = self.loaded.module

        def call() -> object:
            with torch.inference_mode():
                return module(**tensors, return_dict=True)

        return call
