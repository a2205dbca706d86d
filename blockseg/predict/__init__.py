"""Blockwise inference: image zarr -> prediction store, on one global patch lattice.

:func:`predict_array` is the whole-volume in-memory reference; :func:`predict` runs the same
computation block by block on Dask and writes a prediction store (see
:mod:`blockseg.io.predictions`).
"""

from .._lazy import attach

#: public name -> submodule; imported on first use (no torch on ``import blockseg``)
_EXPORTS = {
    "BlockJob": "engine", "PredictPlan": "engine", "PredictReport": "engine", "predict": "engine", "predict_block": "engine",
    "RUNTIMES": "infer", "InferenceOptions": "infer", "compile_model": "infer", "make_lattice": "infer",
    "output_channels": "infer", "predict_array": "infer", "run_batch": "infer",
    "BLENDINGS": "lattice", "AxisLattice": "lattice", "Lattice": "lattice", "read_reflected": "lattice",
    "reflect_index": "lattice", "window_1d": "lattice",
}  # fmt: skip
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
