"""blockseg: blockwise, seamless 3D nuclei segmentation of larger-than-memory volumes on Dask.

The Python API mirrors the command line::

    import blockseg
    cfg = blockseg.load_config("configs/demo.yaml")
    result = blockseg.run(cfg)                                      # blockseg run
    blockseg.predict("img.zarr", "model.pt", "pred.zarr")           # blockseg predict
    blockseg.segment("pred.zarr", "seg.zarr")                       # blockseg segment
    blockseg.evaluate("img.zarr/labels/gt", "seg.zarr")             # blockseg evaluate
    blockseg.train(blockseg.train.load_config("train.yaml"))        # blockseg train

Stage functions are imported on first use, so ``import blockseg`` stays light (no torch).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import BlocksegError
from .grid import Block, BlockGrid, Interface
from .io.volume import Volume, create_label_volume, create_volume, import_volume, open_volume

try:
    __version__ = version("blockseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

#: public name -> (module, attribute), imported lazily
_LAZY = {
    "run": ("blockseg.pipeline.workflow", "run"),
    "load_config": ("blockseg.pipeline.config", "load_config"),
    "parse_config": ("blockseg.pipeline.config", "parse_config"),
    # stage packages, callable as their main function: blockseg.predict(...) == predict.predict(...)
    "predict": ("blockseg.predict", None),
    "segment": ("blockseg.segment", None),
    "evaluate": ("blockseg.evaluate", None),
    "train": ("blockseg.train", None),
    "synthesize": ("blockseg.synth", "synthesize"),
    "load_checkpoint": ("blockseg.models", "load_checkpoint"),
    "summarise": ("blockseg.pipeline.summary", "summarise"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = import_module(module) if attr is None else getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blockseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Block",
    "BlockGrid",
    "BlocksegError",
    "Interface",
    "Volume",
    "__version__",
    "create_label_volume",
    "create_volume",
    "import_volume",
    "open_volume",
    *_LAZY,
]
