"""Blockwise inference: image zarr -> prediction store, on one global patch lattice.

:func:`predict_array` is the whole-volume in-memory reference; :func:`predict` runs the same
computation block by block on Dask and writes a prediction store (see
:mod:`blockseg.io.predictions`).
"""

from .engine import BlockJob, PredictPlan, PredictReport, predict, predict_block
from .infer import RUNTIMES, InferenceOptions, compile_model, make_lattice, output_channels, predict_array, run_batch
from .lattice import BLENDINGS, AxisLattice, Lattice, read_reflected, reflect_index, window_1d

__all__ = [
    "BlockJob",
    "PredictPlan",
    "PredictReport",
    "predict",
    "predict_block",
    "BLENDINGS",
    "AxisLattice",
    "InferenceOptions",
    "RUNTIMES",
    "compile_model",
    "Lattice",
    "make_lattice",
    "output_channels",
    "predict_array",
    "read_reflected",
    "reflect_index",
    "run_batch",
    "window_1d",
]

from .._callable import make_callable as _make_callable

_make_callable(__name__, "predict")
