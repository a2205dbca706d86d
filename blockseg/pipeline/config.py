"""Run configuration: one YAML file describes a whole ``blockseg run``.

The schema is strict: an unknown key or a value of the wrong type is an error that names the
key in plain words (``segment.halo: must be ≥ 0, got -1``). Relative paths in a config file are
taken relative to the file's folder, so a config and its data can move together.

Example (``configs/demo.yaml``)::

    name: demo
    run_dir: runs/demo
    data:
      synth: {preset: nucmm-z, shape: [128, 512, 512], mode: em, seed: 7}
    model:
      checkpoint: demo
    segment:
      decoder: bcd
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..checkpoints import SHIPPED_CHECKPOINTS
from ..configfile import load_yaml
from ..errors import BlocksegError, describe_validation_error
from ..options import Shape, VoxelSize
from ..segment.decoders import DECODERS, PRESETS, check_param
from ..options import Strict as _Strict
from ..io.storage import has_scheme
from ..evaluate.options import RUN_CENTROID_POINTS, EvaluateOptions
from ..predict.options import PredictOptions
from ..segment.options import SegmentOptions

STAGES = ("data", "predict", "segment", "evaluate")


class SynthConfig(_Strict):
    """Generate the input with :func:`blockseg.synth.synthesize` (ground truth included)."""

    preset: Literal["nucmm-z", "nucmm-m"] = "nucmm-z"
    shape: Shape = (128, 512, 512)
    mode: Optional[Literal["em", "uct"]] = None
    seed: int = 0
    mask: bool = False
    density: Optional[float] = Field(default=None, gt=0)
    radius: Optional[float] = Field(default=None, gt=0)
    voxel_size: VoxelSize = None


class DataConfig(_Strict):
    """Input image, optional ground truth and valid mask.

    Give ``image`` (an OME-Zarr volume, or a file ``blockseg import`` reads: npy, npz, tif, h5)
    or ``synth``. ``ground_truth`` / ``mask`` are label volumes (zarr paths; for an imported
    npz/h5 file use ``import``'s key syntax). With ``synth`` the ground truth is the generated
    ``labels/nuclei``.
    """

    image: Optional[str] = None
    image_key: Optional[str] = None
    ground_truth: Optional[str] = None
    ground_truth_key: Optional[str] = None
    mask: Optional[str] = None
    voxel_size: VoxelSize = None
    #: pyramid level / channel / timepoint of the image to segment (OME-Zarr, OME-TIFF, ...);
    #: a zarr image is read in place through a ``#level=..&channel=..`` path fragment
    level: Optional[int] = Field(default=None, ge=0)
    channel: Optional[int] = Field(default=None, ge=0)
    timepoint: Optional[int] = Field(default=None, ge=0)
    #: multiscale levels written for the image / ground truth / mask (None: automatic; 1: none)
    pyramid_levels: Optional[int] = Field(default=None, ge=1)
    synth: Optional[SynthConfig] = None
    chunks: Optional[Shape] = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.image is None) == (self.synth is None):
            raise ValueError("give exactly one of data.image and data.synth")
        return self


class ModelConfig(_Strict):
    """``checkpoint``: a checkpoint file, or ``demo`` / ``fluo`` / ``fluo_synth`` for a shipped checkpoint."""

    checkpoint: str = "demo"


class PredictConfig(PredictOptions):
    """predict's options (:class:`blockseg.predict.options.PredictOptions`, with the API's
    defaults and checks, and the CLI's but for ``diameter``, whose ``auto`` is the CLI's alone;
    see :data:`~blockseg.predict.options.CLI_DIAMETER`). The decoder whose channels are kept is
    ``segment.decoder``'s."""


class TuneConfig(_Strict):
    """Thresholds tuned on annotated nuclei before segmenting (:func:`blockseg.pipeline.tune.tune_store`)."""

    #: instance labels of the annotated nuclei: a volume of the image's shape, or of the region's
    labels: str
    #: the annotated box ``"z0:z1,y0:y1,x0:x1"`` (None: the whole volume)
    region: Optional[str] = None
    #: threshold -> values to search (None: blockseg.pipeline.tune.DEFAULT_GRIDS for the decoder)
    grid: Optional[dict[str, list[float]]] = None

    @field_validator("region", mode="before")
    @classmethod
    def _region_text(cls, v):
        if v is not None and not isinstance(v, str):
            raise ValueError('must be text in quotes, e.g. "50:70,:,:" (YAML reads a bare ":" as a mapping)')
        return v


class SegmentConfig(SegmentOptions):
    """segment's options (:class:`blockseg.segment.options.SegmentOptions`: block_shape, halo,
    tile_voxels, pyramid_levels, keep_work, with the API's and the CLI's defaults), and the decoder."""

    #: None (default): the checkpoint's recommended decoder with its tuned thresholds (``bcd`` for
    #: a checkpoint that recommends none); a name: that decoder
    decoder: Optional[Literal["bcd", "3label", "sdt", "affinities", "cpv"]] = None
    #: a named parameter set (``nucmm``) instead of the checkpoint's tuned thresholds
    preset: Optional[str] = None
    #: single parameters over the checkpoint's tuned thresholds (or the preset, or the defaults)
    params: dict[str, Any] = Field(default_factory=dict)
    #: tune the thresholds on annotated nuclei first (``segment.params`` still override them)
    tune: Optional[TuneConfig] = None

    @field_validator("preset")
    @classmethod
    def _preset(cls, v):

        if v is not None and v not in PRESETS:
            raise ValueError(f"must be one of {sorted(PRESETS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _decoder_params(self):

        if self.decoder is None:  # the checkpoint's decoder: its preset and parameters are checked with it (runcheck)
            return self
        cls = DECODERS[self.decoder]
        if self.preset is not None and self.decoder not in PRESETS[self.preset]:
            raise ValueError(f"preset: {self.preset} has no {self.decoder} decoder (it has {sorted(PRESETS[self.preset])})")

        known = [f.name for f in fields(cls)]
        for name, value in self.params.items():
            if name not in known:
                raise ValueError(f"params.{name}: not a parameter of the {self.decoder} decoder (it has {', '.join(known)})")
            try:
                check_param(cls, name, value)
            except BlocksegError as e:
                raise ValueError(f"params.{name}: " + str(e).split(f"{name} ", 1)[-1]) from None
        return self


#: keys spelled otherwise in the run config than in the API: option -> config key
_CONFIG_SPELLING = {"radius_um": "detection_radius_um"}


class EvaluateConfig(EvaluateOptions):
    """evaluate's options (:class:`blockseg.evaluate.options.EvaluateOptions`, with the API's and
    the CLI's defaults and checks; ``radius_um`` spelled ``detection_radius_um``), and ``enabled``.
    ``centroid_points`` defaults to :data:`~blockseg.evaluate.options.RUN_CENTROID_POINTS` here:
    a run always scored detection."""

    model_config = ConfigDict(alias_generator=lambda name: _CONFIG_SPELLING.get(name, name))

    enabled: bool = True
    centroid_points: bool = Field(RUN_CENTROID_POINTS, description="detection metrics with the predicted instances' centroids")


class ClusterSection(_Strict):
    scheduler: Optional[str] = None
    workers: Optional[int] = Field(default=None, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: Optional[str] = None
    gpu: bool = False
    dashboard: bool = False


class RunConfig(_Strict):
    """A whole run; see the module docstring."""

    name: str = "run"
    run_dir: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    predict: PredictConfig = PredictConfig()
    segment: SegmentConfig = SegmentConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    cluster: ClusterSection = ClusterSection()
    #: how the checkpoint was (or is to be) trained: a ``blockseg train`` config, validated by
    #: :mod:`blockseg.train.config`; ``blockseg train RUN_CONFIG.yaml`` trains from it
    train: Optional[dict[str, Any]] = None

    @field_validator("train")
    @classmethod
    def _train(cls, v):
        if v is None:
            return v
        from ..train.config import parse_config as parse_train

        try:
            parse_train(v)
        except BlocksegError as e:  # "training config: KEY: msg" -> "KEY: msg" under train.
            raise ValueError(str(e).split(": ", 1)[-1]) from None
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain name (no '/')")
        return v

    def resolved(self) -> dict:
        """The config as plain data (JSON-serialisable), defaults filled in, keys spelled as the
        config spells them (``evaluate.detection_radius_um``)."""
        return self.model_dump(mode="json", by_alias=True)


_PATH_KEYS = {"data": ("image", "ground_truth", "mask")}


def _anchor_paths(raw: dict, base: str) -> dict:
    """Make relative paths of a config file relative to the file's folder."""
    raw = dict(raw)

    def anchor(p):
        if not isinstance(p, str) or has_scheme(p) or os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(base, p))

    if isinstance(raw.get("run_dir"), str):
        raw["run_dir"] = anchor(raw["run_dir"])
    model = raw.get("model")
    if isinstance(model, dict) and model.get("checkpoint") not in (None, *SHIPPED_CHECKPOINTS):
        raw["model"] = {**model, "checkpoint": anchor(model["checkpoint"])}
    data = raw.get("data")
    if isinstance(data, dict):
        raw["data"] = {k: (anchor(v) if k in _PATH_KEYS["data"] else v) for k, v in data.items()}
    seg = raw.get("segment")
    if isinstance(seg, dict) and isinstance(seg.get("tune"), dict) and isinstance(seg["tune"].get("labels"), str):
        raw["segment"] = {**seg, "tune": {**seg["tune"], "labels": anchor(seg["tune"]["labels"])}}
    train = raw.get("train")
    if isinstance(train, dict):
        train = dict(train)
        if isinstance(train.get("output"), str):
            train["output"] = anchor(train["output"])
        tdata = train.get("data")
        if isinstance(tdata, dict):
            tdata = dict(tdata)
            if isinstance(tdata.get("train"), list):
                tdata["train"] = [anchor(p) for p in tdata["train"]]
            if isinstance(tdata.get("validation"), str):
                tdata["validation"] = anchor(tdata["validation"])
            train["data"] = tdata
        raw["train"] = train
    return raw


def parse_config(raw: Any, source: str = "config", base_dir: str | None = None) -> RunConfig:
    """Validate a config mapping; errors become one-line :class:`BlocksegError` naming the key."""
    if not isinstance(raw, dict):
        raise BlocksegError(f"{source}: a config is a mapping of keys (name, run_dir, data, ...), got {type(raw).__name__}")
    if base_dir is not None:
        raw = _anchor_paths(raw, base_dir)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise BlocksegError(f"{source}: config key {describe_validation_error(e)}") from None


def load_train_config(path: str | os.PathLike):
    """A training config (:class:`blockseg.train.config.TrainConfig`) from a YAML file: a training
    config itself, or a run config's ``train:`` section (paths anchored at the run config's folder)."""
    from ..train.config import load_config as load_training, parse_config as parse_training

    if not os.path.isfile(path):
        raise BlocksegError(f"training config {path} does not exist")
    with open(path) as f:
        data = load_yaml(f.read(), str(path))
    if not (isinstance(data, dict) and "run_dir" in data):
        return load_training(path)
    section = load_config(path).train
    if section is None:
        raise BlocksegError(f"{path}: a run config without a `train:` section; nothing to train")
    return parse_training(section)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Read and validate a YAML config file (relative paths anchored at its folder).

    ``overrides`` maps dotted keys to values (``{"run_dir": "/tmp/x", "segment.halo": 32}``),
    applied before validation.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise BlocksegError(f"config file {path} does not exist")
    with open(path) as f:
        raw = load_yaml(f.read(), path)
    raw = raw or {}
    base = os.path.dirname(os.path.abspath(path))
    if isinstance(raw, dict):
        raw = _anchor_paths(raw, base)
    for key, value in (overrides or {}).items():
        raw = set_dotted(raw, key, value)
    return parse_config(raw, path)


def set_dotted(raw: Any, key: str, value: Any) -> dict:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    head, _, rest = key.partition(".")
    if rest:
        raw[head] = set_dotted(raw.get(head) or {}, rest, value)
    else:
        raw[head] = value
    return raw
