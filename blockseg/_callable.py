"""Let a stage package be called like its main function: ``blockseg.predict(...)``.

``blockseg.predict`` is a package (``from blockseg.predict import predict_array``) and, for
the Python API that mirrors the CLI, also callable as ``blockseg.predict(image, ckpt, out)``.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Make the module ``module_name`` callable; a call goes to its ``function_name``."""
    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    CallableModule.__name__ = f"callable module {module_name}"
    module.__class__ = CallableModule
