"""The training configuration (``blockseg train CONFIG.yaml``): a strict pydantic schema.

Unknown keys and wrong types are refused with one line naming the key, e.g.
``training config: optimizer.lr: must be a number, got 'fast'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..options import VoxelSize
from ..configfile import load_yaml
from ..errors import BlocksegError, describe_validation_error
from ..models.base import REPRESENTATIONS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ValidationConfig(_Strict):
    """A validation region: a box of a volume, or a held-out fraction of it (a slab).

    When ``volume`` is also a training volume, training crops never read the region (it must
    then be a slab: span the volume in two axes), and its faces are treated as volume faces.
    """

    volume: str
    #: ``[[z0, z1], [y0, y1], [x0, x1]]`` voxels (end exclusive; null for a whole axis)
    region: Optional[list[Optional[tuple[int, int]]]] = None
    #: or: the last ``fraction`` of the volume along ``axis`` (0 z, 1 y, 2 x)
    fraction: Optional[float] = Field(None, gt=0.0, lt=1.0)
    axis: int = Field(0, ge=0, le=2)

    @field_validator("region")
    @classmethod
    def _region(cls, v):
        if v is not None:
            if len(v) != 3:
                raise ValueError("region must have 3 entries (z, y, x), each [start, stop] or null")
            for r in v:
                if r is not None and not (0 <= r[0] < r[1]):
                    raise ValueError(f"region entry {list(r)} must be [start, stop] with 0 <= start < stop")
        return v

    def box(self, shape) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(lo, hi)`` of the region in a volume of ``shape``."""

        if self.region is not None and self.fraction is not None:
            raise BlocksegError("data.validation: give region or fraction, not both")
        lo, hi = [0, 0, 0], [int(s) for s in shape]
        if self.fraction is not None:
            n = max(1, int(round(self.fraction * shape[self.axis])))
            lo[self.axis] = int(shape[self.axis]) - n
        elif self.region is not None:
            for a, r in enumerate(self.region):
                if r is not None:
                    if r[1] > shape[a]:
                        raise BlocksegError(f"data.validation.region {list(r)} exceeds axis {a} of size {shape[a]}")
                    lo[a], hi[a] = int(r[0]), int(r[1])
        return tuple(lo), tuple(hi)  # type: ignore[return-value]


class DataConfig(_Strict):
    """Where the training data is.

    Each entry of ``train`` is an image volume (OME-Zarr) with instance labels under
    ``PATH/<labels>`` and, when it exists, a valid-region mask under ``PATH/<mask>``: crops are
    then centred on valid voxels; and, when it exists, an ignore array under ``PATH/<ignore>``:
    its voxels > 0 are left out of the training loss (partially labelled volumes).
    """

    train: list[str] = Field(min_length=1)
    #: a whole volume (path), or ``{volume, region}`` / ``{volume, fraction, axis}``, or a list
    #: of these: scores are then the mean over the volumes (each volume weighs the same, however
    #: many nuclei it holds), and the decoder is tuned for that mean
    validation: Optional[str | ValidationConfig | list[str | ValidationConfig]] = None
    labels: str = "labels/nuclei"
    mask: Optional[str] = "labels/valid"
    #: sub-path of an optional ignore array per training volume (e.g. unlabelled nuclei of a
    #: partially labelled volume): voxels > 0 contribute nothing to any loss term; volumes
    #: without one (or with an all-zero one) train exactly as before. None: never read
    ignore: Optional[str] = "labels/ignore"
    #: a crop with a smaller foreground fraction is redrawn (up to 10 times)
    min_foreground: float = Field(0.0, ge=0.0, le=1.0)
    #: smallest context (voxels per side) read around a crop for its targets; the targets'
    #: own halo (blockseg.train.targets.target_halo) is always read, so crop targets are exact
    target_context: int = Field(8, ge=0)
    #: cache the targets of whole training volumes (per in-plane transform) when they fit in
    #: this many MiB: crops are then slices (same values, several times faster); 0: never
    cache_targets_mb: float = Field(1024, ge=0)
    #: train at this voxel size (µm, z y x): volumes (and a validation volume) whose voxel size
    #: differs by more than 1 % are resampled to it first (image linear, labels and mask
    #: nearest) into ``OUTPUT/resampled/``; the checkpoint records it. Unset: the volumes'
    #: common voxel size (volumes that differ are refused)
    voxel_size: VoxelSize = None

    @field_validator("validation")
    @classmethod
    def _validation(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("validation: an empty list; leave it out for no validation")
        return v

    def validation_list(self) -> list[str | ValidationConfig]:
        """The validation entries as a list (empty without validation)."""
        v = self.validation
        return [] if v is None else list(v) if isinstance(v, list) else [v]


#: ``model.capacity`` presets of the residual U-Net (``params.widths`` overrides them); the
#: default "base" (16-32-64-128, 1.54 M parameters with B, C, D, cpv) is the
#: architecture's default; "tiny" is the shipped demo's size class (0.09 M)
CAPACITY = {"tiny": [8, 16, 32], "small": [12, 24, 48, 96], "base": [16, 32, 64, 128], "large": [24, 48, 96, 192]}


class ModelConfig(_Strict):
    architecture: str = "resunet3d"
    #: widths preset (see CAPACITY) used when ``params`` sets no ``widths``
    capacity: Literal["tiny", "small", "base", "large"] = "base"
    #: start from this checkpoint's weights (fine-tuning; same architecture and channels)
    init: Optional[str] = None
    #: with ``init``: train only the decoder path (encoder weights frozen)
    freeze_encoder: bool = False
    representations: list[str] = Field(min_length=1)
    #: architecture keyword arguments (widths, anisotropic, ...); ``input_patch`` is set from
    #: ``training.patch``
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("representations")
    @classmethod
    def _known(cls, v):
        bad = [r for r in v if r not in REPRESENTATIONS]
        if bad:
            raise ValueError(f"unknown representation(s) {bad}; known: {sorted(REPRESENTATIONS)}")
        return v


class AugmentConfig(_Strict):
    flip: bool = True
    #: swap y and x (in-plane transpose)
    transpose: bool = True
    #: random 90-degree rotations in the (y, x) plane
    rot90: bool = True
    #: image multiplied by a factor in [1 - s, 1 + s]
    intensity_scale: float = Field(0.1, ge=0.0, lt=1.0)
    #: then shifted by up to +-this fraction of the normalised range (units of ``scale``)
    intensity_shift: float = Field(0.1, ge=0.0)
    #: appearance changes between microscopes (each applied to a crop with ``appearance_p``;
    #: 0 = off, the default): gamma exp(U(-g, g)) on the crop's own [min, max] range, Gaussian
    #: blur with a sigma per axis drawn from U(0, s) voxels, additive Gaussian noise with a
    #: standard deviation drawn from U(0, n) normalised units (blockseg.train.data.appearance)
    gamma: float = Field(0.0, ge=0.0, le=2.0)
    blur_sigma: float = Field(0.0, ge=0.0, le=4.0)
    noise_sigma: float = Field(0.0, ge=0.0, le=1.0)
    appearance_p: float = Field(0.5, ge=0.0, le=1.0)
    elastic: bool = False
    #: elastic deformation: control-point spacing (voxels) and displacement s.d. (voxels)
    elastic_spacing: int = Field(16, ge=2)
    elastic_sigma: float = Field(2.0, ge=0.0)
    #: probability of applying the elastic deformation to a crop
    elastic_p: float = Field(0.5, ge=0.0, le=1.0)


class OptimizerConfig(_Strict):
    """SGD + momentum with cosine decay (NucMM) or Adam (aux-task paper)."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    betas: tuple[float, float] = (0.95, 0.999)
    #: linear warm-up iterations (from lr / 1000)
    warmup: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class DecoderConfig(_Strict):
    """Decoder used for validation (and recorded in the checkpoint as recommended)."""

    name: str = "bcd"
    params: dict[str, float] = Field(default_factory=dict)
    #: parameter grid searched on the validation volume at the end of training; the best
    #: (COCO AP-50, then AP-75) is recorded in the checkpoint
    tune: dict[str, list[float]] = Field(default_factory=dict)


class TrainConfig(_Strict):
    data: DataConfig
    model: ModelConfig
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    #: directory of checkpoint.pt (latest weights), resume.pt and train_log.jsonl
    output: str
    iterations: int = Field(gt=0)
    patch: tuple[int, int, int] = (32, 96, 96)
    batch_size: int = Field(2, gt=0)
    loss_weights: dict[str, float] = Field(default_factory=dict)
    #: cpv loss "relative" to the nuclei's size (default: comparable to the other losses, no
    #: hand-set loss_weights needed) or in "voxels" (the aux-task paper's unnormalised MSE)
    cpv_units: Literal["relative", "voxels"] = "relative"
    #: keyword parameters of the target computation (alpha, beta, ...)
    targets: dict[str, Any] = Field(default_factory=dict)
    checkpoint_every: int = Field(500, gt=0)
    #: validation AP every this many iterations (0: only at the end, if a validation volume is set)
    validate_every: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    seed: int = Field(0, ge=0)
    #: torch CPU threads (default: all cores)
    threads: Optional[int] = Field(None, gt=0)
    device: str = "auto"
    #: mixed precision (CUDA only; ignored on CPU)
    amp: bool = True
    #: image normalisation (blockseg.predict.normalise): "percentile" (each volume's 1-99.8 % -> [0, 1],
    #: also applied per volume at inference), {percentile: [low, high]}, or the older fixed
    #: maps in raw units: "mean_std" from the training images, or {offset, scale}
    normalisation: Any = "percentile"
    #: whether the nuclei of every training volume are brighter ("bright") or darker ("dark") than
    #: around them: recorded in the model card (metadata["normalisation"]["polarity"]); predict
    #: inverts an input said to have the other polarity (blockseg.predict.polarity)
    polarity: Optional[Literal["bright", "dark"]] = None

    @field_validator("normalisation")
    @classmethod
    def _norm(cls, v):
        if v in ("mean_std", "percentile"):
            return v
        if isinstance(v, dict) and set(v) == {"percentile"}:
            lo, hi = (float(x) for x in v["percentile"])
            if not 0 <= lo < hi <= 100:
                raise ValueError("percentile must be [low, high] with 0 <= low < high <= 100")
            return {"percentile": [lo, hi]}
        if isinstance(v, dict) and set(v) == {"offset", "scale"} and float(v["scale"]) > 0:
            return {"offset": float(v["offset"]), "scale": float(v["scale"])}
        raise ValueError("must be 'percentile', {percentile: [low, high]}, 'mean_std' or {offset: float, scale: float > 0}")


def parse_config(data: dict) -> TrainConfig:
    """Validate a config dict; raise :class:`BlocksegError` with one line naming the key."""
    if not isinstance(data, dict):
        raise BlocksegError("training config must be a mapping of keys to values")
    try:
        return TrainConfig(**data)
    except ValidationError as err:
        raise BlocksegError(f"training config: {describe_validation_error(err)}") from None


def load_config(path) -> TrainConfig:
    """Read and validate a YAML training config (relative paths are relative to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise BlocksegError(f"training config {path} does not exist")
    data = load_yaml(path.read_text(), str(path))  # duplicate keys and bad YAML: one line
    if isinstance(data, dict) and "run_dir" in data:
        raise BlocksegError(f"{path}: a run config (it has run_dir): read its `train:` section with "
                            "blockseg.load_train_config (what `blockseg train` does)")  # fmt: skip
    return parse_config(data)
