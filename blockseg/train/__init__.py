"""Training networks from zarr volumes (``blockseg train CONFIG.yaml``).

Public API: :func:`train`, :func:`load_config` / :func:`parse_config` (the strict config
schema :class:`TrainConfig`), :class:`CropSampler` (augmented crops with targets computed after
augmentation), :func:`predict_image`, :func:`score_prediction`, :func:`tune_decoder`.
"""

from .config import TrainConfig, load_config, parse_config
from .data import CropSampler, centre_table, compute_targets, image_statistics
from .trainer import TrainResult, make_model, predict_image, score_prediction, train, tune_decoder, validation_scores

__all__ = [
    "CropSampler",
    "TrainConfig",
    "TrainResult",
    "compute_targets",
    "image_statistics",
    "centre_table",
    "load_config",
    "make_model",
    "parse_config",
    "predict_image",
    "score_prediction",
    "train",
    "tune_decoder",
    "validation_scores",
]
