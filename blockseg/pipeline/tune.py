"""Tune a prediction store's decoder thresholds on annotated nuclei, without training.

A network's outputs may be good on new data while the thresholds it was shipped with are not
(the shipped ``fluo`` checkpoint on real confocal nuclei: experiments/results/fluo_checkpoint.md).
With a few annotated nuclei -- a small region of a large volume is enough -- the thresholds can be
tuned on the predictions themselves: :func:`tune_store` searches a grid of the decoder's
thresholds on the annotated region (best COCO AP-50, then AP-75; a grid edge is widened, as in
training) and writes the result into the store's decoder recommendation, which ``segment`` then
uses for the whole volume, naming where it came from.

Sizes (``min_size``, ``min_seed_size``) are not tuned: they count voxels of this image already.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import zarr

from ..errors import BlocksegError
from ..io.export import parse_region
from ..io.predictions import open_predictions, read_channels
from ..io.safety import prepare_output
from ..io.volume import open_volume
from ..provenance import file_digest

#: the thresholds searched by default, per decoder (the tuner widens a grid edge it picks)
DEFAULT_GRIDS: dict[str, dict[str, list[float]]] = {
    "bcd": {"seed_c": [0.3, 0.5, 0.8], "seed_d": [0.1, 0.3, 0.5], "fg_b": [0.5, 0.7, 0.85]},
    "3label": {"seed_t": [0.3, 0.5, 0.7, 0.9], "fg_t": [0.3, 0.5, 0.7]},
    "sdt": {"seed_t": [-0.2, -0.1, 0.0, 0.1, 0.3], "fg_t": [-0.1, 0.0, 0.05, 0.2]},
    "affinities": {"seed_t": [0.7, 0.8, 0.9, 0.95], "fg_t": [0.3, 0.5, 0.7]},
    "cpv": {"fg_b": [0.3, 0.5, 0.7], "min_votes": [1, 3, 5]},
}
#: largest annotated region read into memory (voxels): predictions and labels of it are held
MAX_REGION_VOXELS = 256 * 1024**2


@dataclass
class TuneResult:
    """What :func:`tune_store` found (``written``: whether the store now recommends it)."""

    decoder: str
    params: dict
    scores: dict
    before_params: dict
    before_scores: dict
    region: tuple[tuple[int, int], ...]
    n_annotated: int
    grid: dict = field(default_factory=dict)
    written: bool = False

    def to_dict(self) -> dict:
        return {
            "decoder": self.decoder, "params": self.params, "scores": self.scores, "before_params": self.before_params,
            "before_scores": self.before_scores, "region": [list(r) for r in self.region],
            "annotated_nuclei": self.n_annotated, "grid": self.grid, "written": self.written,
        }  # fmt: skip

    def recommendation(self, labels: str, stored: Mapping | None = None) -> dict:
        """The decoder recommendation to store or segment with: the tuned parameters, where they
        were tuned, and (from ``stored``) the checkpoint they started from."""
        rec = {"name": self.decoder, "params": dict(self.params), "from": "tuned",
               "tuned_on": f"{self.n_annotated} annotated nuclei in region " + " ".join(f"{a}:{b}" for a, b in self.region),
               "tuning": {"labels": labels, "grid": self.grid, "scores": self.scores,
                          "before": {"params": self.before_params, "scores": self.before_scores}}}  # fmt: skip
        if stored and stored.get("checkpoint"):
            rec["checkpoint"], rec["checkpoint_sha256"] = stored["checkpoint"], stored.get("checkpoint_sha256")
        return rec

    def summary(self) -> str:
        """One line: where it was tuned, the scores before and after, what changed."""
        changed = {k: v for k, v in self.params.items() if self.before_params.get(k) != v}
        what = ", ".join(f"{k} {self.before_params.get(k):g} -> {v:g}" for k, v in changed.items()) or "no change"
        return (
            f"tuned {self.decoder} on {self.n_annotated} annotated nuclei in region "
            + " ".join(f"{a}:{b}" for a, b in self.region)
            + f": AP-50 {self.before_scores['AP50']:.3f} -> {self.scores['AP50']:.3f}, AP-75 "
            f"{self.before_scores['AP75']:.3f} -> {self.scores['AP75']:.3f} ({what})"
        )

    def describe(self) -> str:
        """:meth:`summary` and whether the store now recommends the result (``blockseg tune``'s line)."""
        return self.summary() + ("; written to the store" if self.written else "; not written (dry run)")


def labels_cover_volume(label_shape, shape, box, volume: str = "store") -> bool:
    """Whether annotations of ``label_shape`` cover the whole volume (True: cut the region out of
    them) or only the region ``box`` (False: they are its annotation, ``((start, stop), ...)``).

    Raises
    ------
    BlocksegError
        When they fit neither (``volume`` names the volume in the message).
    """
    region = tuple(b - a for a, b in box)
    if tuple(label_shape) == tuple(shape):
        return True
    if tuple(label_shape) == region:
        return False
    raise BlocksegError(f"labels of shape {tuple(label_shape)} fit neither the {volume} {tuple(shape)} nor the region {region}")


def tune_store(
    pred_path: str,
    labels,
    region: str | Sequence[slice] | None = None,
    decoder: str | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    write: bool = True,
) -> TuneResult:
    """Tune the decoder of a prediction store on annotated nuclei and (``write``) store the result.

    Parameters
    ----------
    pred_path : str
        A prediction store written by ``predict``.
    labels : str or ndarray
        Instance labels (0 = background): a label volume of the store's shape (the region is cut
        from it), or one of the region's shape (the annotation of that region).
    region : str or sequence of 3 slices, optional
        The annotated box, ``"z0:z1,y0:y1,x0:x1"`` (bounds may be left out) or slices (default:
        the whole volume). Every nucleus in it must be annotated.
    decoder : str, optional
        Decoder to tune (default: the store's recommendation, else ``bcd``).
    grid : mapping, optional
        Threshold -> values to search (default :data:`DEFAULT_GRIDS`).
    write : bool
        Write the tuned parameters as the store's decoder recommendation (``segment``'s defaults).

    Returns
    -------
    TuneResult
    """
    from ..segment import DECODERS, make_decoder  # numba, scipy, torch: loaded when a store is tuned, not by the run checks that import this module
    from ..segment.params import choose_decoder, store_decoder
    from ..train.trainer import score_prediction, tune_decoder

    vols = open_predictions(pred_path)
    sl = _region_slices(region, next(iter(vols.values())).shape)
    box = tuple((s.start, s.stop) for s in sl)
    gt, n_nuclei = _region_labels(labels, pred_path, sl, next(iter(vols.values())).shape, box)
    stored = store_decoder(pred_path)
    choice = choose_decoder(decoder, stored=stored)
    name = choice.decoder.name
    grid = {k: list(v) for k, v in (grid or DEFAULT_GRIDS.get(name, {})).items()}
    known = set(choice.decoder.params())
    if not grid or set(grid) - known:
        raise BlocksegError(f"nothing to tune for decoder {name}: grid {sorted(grid)} (its parameters: {sorted(known)})")
    missing = [c for c in DECODERS[name].channels if c not in vols]
    if missing:
        raise BlocksegError(f"the store lacks the channels {missing} that decoder {name} reads")
    pred = read_channels({c: vols[c] for c in DECODERS[name].channels}, sl)
    before = choice.decoder.params()
    before_scores = score_prediction(pred, gt, choice.decoder)
    params, scores = tune_decoder(pred, gt, name, before, grid)
    params = make_decoder(name, **params).params()
    if (before_scores["AP50"], before_scores["AP75"]) >= (scores["AP50"], scores["AP75"]):
        params, scores = before, before_scores  # the grid found nothing better: keep what was there
    result = TuneResult(name, params, {k: v for k, v in scores.items() if k != "volumes"}, before,
                        before_scores, box, n_nuclei, grid)  # fmt: skip
    if write:
        _write_recommendation(pred_path, result, "array" if isinstance(labels, np.ndarray) else str(labels), stored)
    return result


def _region_slices(region, shape) -> tuple[slice, ...]:
    """The annotated box as slices (a ``"z0:z1,y0:y1,x0:x1"`` string or slices), at most
    :data:`MAX_REGION_VOXELS` voxels."""

    if region is None or isinstance(region, str):
        sl = parse_region(region, shape)
    else:
        sl = parse_region(",".join(f"{s.start or 0}:{s.stop if s.stop is not None else n}" for s, n in zip(region, shape)),
                          shape)  # fmt: skip
    n = math.prod(s.stop - s.start for s in sl)
    if n > MAX_REGION_VOXELS:
        raise BlocksegError(f"the annotated region holds {n:,} voxels; tune on at most {MAX_REGION_VOXELS:,} (a smaller region)")
    return sl


def _region_labels(labels, pred_path: str, sl, shape, box) -> tuple[np.ndarray, int]:
    """``(labels of the region, number of nuclei)``, refused (one line) when they are not
    instance labels: not integers, the store's own image, (almost) no background, no nuclei."""

    lab = open_volume(str(labels)).array if isinstance(labels, (str, bytes)) or hasattr(labels, "__fspath__") else labels
    gt = np.asarray(lab[sl] if labels_cover_volume(lab.shape, shape, box, "store") else lab[...])
    if gt.dtype.kind not in "iu":
        raise BlocksegError(f"labels must be integer instance ids, got {gt.dtype}")
    source = ((dict(zarr.open_group(str(pred_path), mode="r").attrs.get("blockseg", {})).get("predictions") or {})
              .get("run") or {}).get("image")  # fmt: skip
    if isinstance(labels, (str, os.PathLike)) and source and os.path.abspath(str(labels)) == os.path.abspath(source):
        raise BlocksegError(f"{labels} is the image these predictions were made from, not instance labels")
    background = float(np.mean(gt == 0))
    if background < 0.01:
        raise BlocksegError(f"the labels have almost no background ({background:.1%} zeros in the region): "
                            "instance labels with 0 = background are needed, not an image")  # fmt: skip
    n_nuclei = int(np.unique(gt[gt != 0]).size)
    if n_nuclei == 0:
        raise BlocksegError("the annotated region holds no nuclei (all labels are 0)")
    return gt, n_nuclei


def _write_recommendation(pred_path: str, result: TuneResult, labels: str, stored) -> None:
    """The tuned parameters become the store's decoder recommendation (segment's defaults)."""
    group = zarr.open_group(str(pred_path), mode="r+")
    attrs = dict(group.attrs["blockseg"])
    attrs["predictions"] = {**attrs["predictions"], "decoder": result.recommendation(labels, stored)}
    group.attrs["blockseg"] = attrs
    result.written = True


def save_tuned_checkpoint(pred_path: str, out: str) -> str:
    """Write a copy of the checkpoint a store was predicted with, recommending the thresholds
    :func:`tune_store` wrote into the store -- to segment other volumes of the same kind.

    Only the tuned thresholds change; the size thresholds stay the checkpoint's own (they count
    voxels of its grid); weights and every other field are copied. ``out`` must not exist.

    Returns
    -------
    str
        ``out``.
    """
    import torch

    from ..models import read_checkpoint
    from ..segment.params import store_decoder  # numba, scipy: as above

    rec = store_decoder(pred_path)
    if not rec or rec.get("from") != "tuned":
        raise BlocksegError(f"{pred_path} holds no tuned thresholds: run blockseg tune on it first (without --dry-run)")
    src = rec.get("checkpoint")
    if not src or not os.path.isfile(src):
        raise BlocksegError(f"the checkpoint these predictions were made with ({src}) is not available")
    if rec.get("checkpoint_sha256") and file_digest(src) != rec["checkpoint_sha256"]:
        raise BlocksegError(f"checkpoint {src} changed since {pred_path} was predicted with it")
    prepare_output(out, [pred_path, src], what="checkpoint")  # refuses an existing file, an input
    payload = read_checkpoint(src)
    meta = payload["metadata"]
    old = dict(meta.get("decoder") or {})
    base = dict(old.get("params") or {}) if old.get("name") == rec["name"] else {}
    tuned = {k: rec["params"][k] for k in (rec.get("tuning") or {}).get("grid", {}) if k in rec["params"]}
    meta["decoder"] = {"name": rec["name"], "params": {**base, **tuned}, "tuned_on": rec["tuned_on"],
                       "tuned_from": {"predictions": os.path.abspath(pred_path), "checkpoint": src,
                                      "scores": (rec.get("tuning") or {}).get("scores")}}  # fmt: skip
    tmp = f"{out}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, out)  # whole or not at all
    return out
