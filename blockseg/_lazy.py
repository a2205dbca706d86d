"""Lazy package exports (as scikit-image's ``lazy_loader.attach``): a package names what its
submodules export and imports a submodule on the first use of one of its names.

The stage packages (:mod:`blockseg.predict`, :mod:`blockseg.train`, ...) use it so that
``import blockseg`` loads them without torch, numba or dask: ``from blockseg.predict import
predict_array`` imports :mod:`blockseg.predict.infer` then.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def attach(package: str, exports: dict[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public name ``n`` lives in its
    submodule ``exports[n]``.

    Examples
    --------
    >>> getattr_, dir_, all_ = attach("blockseg.evaluate", {"evaluate": "core"})
    >>> getattr_("evaluate").__module__
    'blockseg.evaluate.core'
    >>> all_
    ['evaluate']
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
