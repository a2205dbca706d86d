"""What a run reads and writes, and what it runs with, derived from its config alone: the
:class:`RunLayout` of its files, its checkpoint and the segment stage's decoder.

Both :mod:`.workflow` (which runs the stages) and :mod:`.runcheck` (which checks a run before
its first stage) read them here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..io.selection import with_selection
from ..segment.params import checkpoint_decoder, choose_decoder
from .config import RunConfig


def is_zarr(path: str) -> bool:
    """Whether ``path`` names a zarr (read in place) rather than a file to import."""
    return path.rstrip("/").endswith(".zarr") or os.path.isdir(path)


def _inside(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


@dataclass(frozen=True)
class RunLayout:
    """Where every input and output of a run lives (derived from the config alone)."""

    root: str
    image: str
    ground_truth: str | None
    mask: str | None
    predictions: str
    labels: str
    evaluation: str

    @property
    def stages_dir(self) -> str:
        return os.path.join(self.root, "stages")

    def stage_record(self, stage: str) -> str:
        return os.path.join(self.stages_dir, f"{stage}.json")

    @classmethod
    def of(cls, cfg: RunConfig) -> "RunLayout":
        root = os.path.abspath(cfg.run_dir)
        d = cfg.data
        if d.synth is not None or not is_zarr(d.image):
            image = os.path.join(root, "image.zarr")
        else:  # read in place; a chosen level / channel / timepoint rides on the path
            image = with_selection(d.image, {"level": d.level, "channel": d.channel, "timepoint": d.timepoint})
        if d.synth is not None:
            gt = f"{image}/labels/nuclei"
            mask = f"{image}/labels/valid" if d.synth.mask else None
        else:
            gt = d.ground_truth if d.ground_truth is None or is_zarr(d.ground_truth) else os.path.join(root, "ground_truth.zarr")
            mask = d.mask if d.mask is None or is_zarr(d.mask) else os.path.join(root, "mask.zarr")
        # the segmentation becomes a label image of the image only when the run made the image
        # itself (synthesised or imported into run_dir): never written into the user's zarr
        own_image = d.synth is not None or image != d.image
        labels = f"{image}/labels/blockseg" if own_image and _inside(image, root) else os.path.join(root, "segmentation.zarr")
        return cls(
            root=root,
            image=image,
            ground_truth=gt,
            mask=mask,
            predictions=os.path.join(root, "predictions.zarr"),
            labels=labels,
            evaluation=os.path.join(root, "evaluation"),
        )


def checkpoint_path(cfg: RunConfig) -> str:
    """The checkpoint file of a config (a name of :data:`blockseg.checkpoints.SHIPPED_CHECKPOINTS` for a shipped one)."""
    from ..models import resolve_checkpoint  # torch: imported when a run needs its network, not with the config

    return resolve_checkpoint(cfg.model.checkpoint)


def segment_decoder(cfg: RunConfig, payload: dict | None = None, stored: dict | None = None):
    """The run's decoder: the checkpoint's tuned recommendation (when it is for
    ``segment.decoder``), or ``segment.preset``, with ``segment.params`` over it, parameter by
    parameter (:func:`blockseg.segment.params.choose_decoder`).

    ``payload``: the checkpoint, if already read. ``stored``: the recommendation as the
    prediction store carries it (sizes rescaled when predict resampled), used instead of the
    checkpoint's own.
    """
    from ..models import read_checkpoint  # torch, as above

    s = cfg.segment
    if stored is None:
        path = checkpoint_path(cfg)
        payload = read_checkpoint(path) if payload is None else payload
        stored = checkpoint_decoder(payload, path)
    label = "segment.tune" if (stored or {}).get("from") == "tuned" else "checkpoint"
    return choose_decoder(s.decoder, s.preset, s.params, stored, stored_label=label, user_label="config")
