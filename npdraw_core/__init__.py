"""npdraw core: the NP-DRAW model, its component interfaces and plugin registry, stages and CLI.

    import npdraw_core
    model = npdraw_core.load_trained("runs/demo")  # an eval-mode NPDraw from a model file or run directory

Importing the package is cheap: `load_trained` (and with it torch) is imported on first use, so that
`npdraw --help` and `npdraw --version` answer at once.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("npdraw")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_trained"]


def __getattr__(name: str):
    if name == "load_trained":
        from npdraw_core.model_file import load_trained

        return load_trained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
