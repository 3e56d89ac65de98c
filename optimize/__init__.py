"""optimize: a deployment compiler for transformer encoders.

The Python API (the CLI only wraps it)::

    from optimize import ExportJob, export_model
    outcome = export_model(ExportJob(model="bert", target="ort-fp32", output=Path("out/bert")))

    model = optimize.load("out/bert")    # the bundle's task: model.encode(texts), model.predict(texts)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimize.config import ExportJob
    from optimize.errors import OptimizeError


def __getattr__(name: str) -> Any:
    """ExportJob and OptimizeError on first use: ``python -m optimize`` imports this package before its
    launcher can handle Ctrl-C (optimize/launch.py), so importing the package does no work."""
    if name == "ExportJob":
        from optimize.config import ExportJob

        return ExportJob
    if name == "OptimizeError":
        from optimize.errors import OptimizeError

        return OptimizeError
    raise AttributeError(f"module 'optimize' has no attribute {name!r}")


def export_model(job: ExportJob, reporter=None):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """See :func:`optimize.api.export_model`; imported lazily so ``import optimize`` stays light."""
    from optimize.api import export_model as _export_model

    return _export_model(job, reporter)


def load(path, **options):  # noqa: ANN001, ANN003, ANN201 - thin lazy wrapper
    """See :func:`optimize.inference.load`: a bundle folder -> its task's model object."""
    from optimize.inference import load as _load

    return _load(path, **options)


__all__ = ["ExportJob", "OptimizeError", "__version__", "export_model", "load"]
