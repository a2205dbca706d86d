"""blockseg: blockwise, seamless 3D nuclei segmentation of larger-than-memory volumes on Dask.

The Python API mirrors the command line, one plain function per command::

    import blockseg
    cfg = blockseg.load_config("configs/demo.yaml")
    result = blockseg.run(cfg)                                      # blockseg run
    blockseg.predict("img.zarr", "model.pt", "pred.zarr")           # blockseg predict
    blockseg.segment("pred.zarr", "seg.zarr")                       # blockseg segment
    blockseg.evaluate("img.zarr/labels/gt", "seg.zarr")             # blockseg evaluate
    blockseg.train(blockseg.load_train_config("train.yaml"))        # blockseg train

The stage functions import their stage on first call, so ``import blockseg`` stays light (no
torch, no compiled kernels). ``blockseg.predict`` is the function; the package of the same name
is imported by its full path (``from blockseg.predict import predict_array``).
"""

from importlib import import_module

# the stage packages first: they are light (lazy exports), and importing them here binds the
# package names once, so that the functions defined below keep those names for good
from . import evaluate as _evaluate_pkg, predict as _predict_pkg, segment as _segment_pkg, train as _train_pkg  # noqa: F401
from ._version import __version__
from .errors import BlocksegError
from .grid import Block, BlockGrid, Interface
from .io.volume import Volume, create_label_volume, create_volume, import_volume, open_volume


def predict(*args, **kwargs):
    """Blockwise inference, image -> prediction store (``blockseg predict``).

    The parameters and result are those of :func:`blockseg.predict.engine.predict`.
    """
    from .predict.engine import predict as stage

    return stage(*args, **kwargs)


def segment(*args, **kwargs):
    """Blockwise seeded watershed, prediction store -> label volume (``blockseg segment``).

    The parameters and result are those of :func:`blockseg.segment.pipeline.segment`.
    """
    from .segment.pipeline import segment as stage

    return stage(*args, **kwargs)


def evaluate(*args, **kwargs):
    """Streaming evaluation of a label volume against ground truth (``blockseg evaluate``).

    The parameters and result are those of :func:`blockseg.evaluate.core.evaluate`.
    """
    from .evaluate.core import evaluate as stage

    return stage(*args, **kwargs)


def train(*args, **kwargs):
    """Train a network from zarr volumes (``blockseg train``).

    The parameters and result are those of :func:`blockseg.train.trainer.train`.
    """
    from .train.trainer import train as stage

    return stage(*args, **kwargs)


#: public name -> (module, attribute), imported on first use
_LAZY = {
    "run": ("blockseg.pipeline.workflow", "run"),
    "load_config": ("blockseg.pipeline.config", "load_config"),
    "parse_config": ("blockseg.pipeline.config", "parse_config"),
    "load_train_config": ("blockseg.pipeline.config", "load_train_config"),
    "label": ("blockseg.segment.components", "label"),
    "tune": ("blockseg.pipeline.tune", "tune_store"),
    "synthesize": ("blockseg.synth", "synthesize"),
    "load_checkpoint": ("blockseg.models", "load_checkpoint"),
    "summarise": ("blockseg.pipeline.summary", "summarise"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
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
    "evaluate",
    "import_volume",
    "open_volume",
    "predict",
    "segment",
    "train",
    *_LAZY,
]
