"""Training networks from zarr volumes (``blockseg train CONFIG.yaml``).

Public API: :func:`train`, :func:`load_config` / :func:`parse_config` (the strict config
schema :class:`TrainConfig`), :class:`CropSampler` (augmented crops with targets computed after
augmentation), :func:`predict_image`, :func:`score_prediction`, :func:`tune_decoder`.
"""

from .._lazy import attach

#: public name -> submodule; imported on first use (no torch on ``import blockseg``)
_EXPORTS = {
    "TrainConfig": "config", "load_config": "config", "parse_config": "config",
    "CropSampler": "data", "centre_table": "data", "compute_targets": "data",
    "TrainResult": "trainer", "make_model": "trainer", "predict_image": "trainer", "score_prediction": "trainer",
    "train": "trainer", "tune_decoder": "trainer", "validation_scores": "trainer",
}  # fmt: skip
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
