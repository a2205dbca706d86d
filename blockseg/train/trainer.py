"""The training loop: ``train(config)`` (used by ``blockseg train CONFIG.yaml``).

Outputs in ``config.output``:

* ``checkpoint.pt`` -- latest weights + metadata (a normal blockseg checkpoint: loading it needs
  no other file), written every ``checkpoint_every`` iterations and at the end;
* ``resume.pt`` -- optimizer, scheduler, random-generator states and iteration, written with it;
* ``train_log.jsonl`` -- one JSON line per ``log_every`` iterations (mean losses, lr, seconds)
  and per validation.

``train(config, resume=True)`` continues from ``resume.pt``: the random streams are restored,
so an interrupted and resumed run draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import BlocksegError
from .losses import MultiLoss
from ..models.base import BlocksegNet, build_model, save_checkpoint
from ..models.checkpoint import check_decoder_channels, load_checkpoint
from .config import CAPACITY, TrainConfig, ValidationConfig
from .data import CropSampler
from ..evaluate import evaluate
from ..io.safety import check_not_input
from ..io.untrusted import load_plain
from ..io.volume import create_label_volume, create_volume, open_volume
from ..models import read_checkpoint, resolve_checkpoint
from ..predict.infer import predict_array
from ..predict.normalise import training_normalisation, volume_affines
from ..predict.resample import instance_diameters_um, resample_array
from ..segment import DECODERS, make_decoder, segment_array

log = logging.getLogger("blockseg.train")

CHECKPOINT = "checkpoint.pt"
RESUME = "resume.pt"
LOG = "train_log.jsonl"
#: marks a resume file as blockseg's; its format number (files before it had neither: same content)
RESUME_MAGIC, RESUME_FORMAT = "blockseg-resume", 1
#: what a resume file holds: optimiser, scheduler and scaler states, random states, the run's identity
RESUME_KEYS = ("iteration", "optimizer", "scheduler", "scaler", "numpy_rng", "torch_rng", "model_config", "patch")


@dataclass
class TrainResult:
    """What :func:`train` did."""

    checkpoint: str
    iteration: int
    losses: list[float] = field(default_factory=list)
    validation: dict | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------------------- helpers
def read_resume(path) -> dict:
    """Load and check a training resume file (``OUTPUT/resume.pt``) without running anything in it.

    It is loaded as tensors and plain data only (:func:`blockseg.io.untrusted.load_plain`): a file
    holding any other Python object -- which ``torch.load(weights_only=False)`` would have
    executed -- is refused with one line saying why. Files written before resume files carried
    :data:`RESUME_MAGIC` hold the same plain data and load too.

    Raises
    ------
    BlocksegError
        Refused (not plain data), not a blockseg resume file, or of another format.
    """

    state = load_plain(path, "resume file")
    if not isinstance(state, dict) or state.get("magic", RESUME_MAGIC) != RESUME_MAGIC:
        raise BlocksegError(f"{path}: not a blockseg resume file")
    if state.get("format", RESUME_FORMAT) != RESUME_FORMAT:
        raise BlocksegError(f"{path}: resume file format {state.get('format')} is not supported (this blockseg reads format {RESUME_FORMAT})")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise BlocksegError(f"{path}: not a blockseg resume file (no {', '.join(missing)})")
    if not isinstance(state["iteration"], int) or not isinstance(state["torch_rng"], torch.Tensor) or not all(
        isinstance(state[k], dict) for k in ("optimizer", "scheduler", "scaler", "numpy_rng")
    ):
        raise BlocksegError(f"{path}: a damaged blockseg resume file (entries of the wrong type)")
    return state


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BlocksegError(f"unknown device {name!r}") from None


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_model(cfg: TrainConfig) -> BlocksegNet:
    """The network of a config (``training.patch`` is its ``input_patch``)."""

    params = dict(cfg.model.params)
    params["representations"] = list(cfg.model.representations)
    if cfg.model.architecture == "resunet3d" and "widths" not in params:
        params["widths"] = list(CAPACITY[cfg.model.capacity])
    params.setdefault("input_patch", list(cfg.patch))
    model = build_model(cfg.model.architecture, **params)
    model.geometry.output_for(cfg.patch)  # refuse an inadmissible patch now
    return model


#: module names of the encoder path (frozen by ``model.freeze_encoder``)
ENCODER_MODULES = ("stem", "down", "encoder")


def init_from_checkpoint(model: BlocksegNet, path: str, freeze_encoder: bool = False) -> dict:
    """Load the weights of checkpoint ``path`` into ``model`` (fine-tuning); return its metadata.

    The checkpoint must have the same architecture, widths and output channels (its heads are
    reused). With ``freeze_encoder`` the parameters of :data:`ENCODER_MODULES` stop training.
    """

    path = resolve_checkpoint(path)  # demo, fluo, fluo_synth: the shipped files
    loaded, payload = load_checkpoint(path, "cpu")
    if tuple(loaded.channels) != tuple(model.channels):
        raise BlocksegError(f"init checkpoint {path} predicts {list(loaded.channels)}, this model {list(model.channels)}")
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as e:
        raise BlocksegError(
            f"init checkpoint {path} has another architecture or widths ({str(e).splitlines()[0]}); "
            "set model.params to the checkpoint's"
        ) from None
    if freeze_encoder:
        names = [n for n in ENCODER_MODULES if hasattr(model, n)]
        if not names:
            raise BlocksegError(f"freeze_encoder: architecture {type(model).__name__} has no encoder modules {ENCODER_MODULES}")
        for n in names:
            for prm in getattr(model, n).parameters():
                prm.requires_grad_(False)
    return payload.get("metadata", {})


def freeze_norm_statistics(model: BlocksegNet) -> None:
    """Keep the frozen encoder's batch-norm statistics fixed (eval mode for those modules)."""
    for n in ENCODER_MODULES:
        if hasattr(model, n):
            for m in getattr(model, n).modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """SGD (momentum, weight decay) or Adam, with linear warm-up and cosine decay to 0."""
    o = cfg.optimizer
    if o.name == "sgd":
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    total, warm = cfg.iterations, o.warmup

    def factor(it: int) -> float:
        if it < warm:
            return 1e-3 + (1 - 1e-3) * it / warm
        if o.schedule == "constant":
            return 1.0
        p = (it - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def predict_image(model: BlocksegNet, image: np.ndarray, normalisation: dict | None, device=None) -> dict[str, np.ndarray]:
    """Whole-volume in-memory prediction ``{channel: float32}`` of ``image`` (z, y, x).

    Uses :func:`blockseg.predict.predict_array` (patch lattice with blending).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return predict_array(model, image, normalisation=normalisation, device=str(device))
    finally:
        model.train(was_training)


def validation_sets(cfg: TrainConfig) -> list[tuple[str, tuple | None]]:
    """``[(volume path, (lo, hi) box or None), ...]`` of the config's validation data (may be empty)."""

    return [(v, None) if isinstance(v, str) else (v.volume, v.box(open_volume(v.volume).shape)) for v in cfg.data.validation_list()]


def read_validation(path: str, box=None, labels: str = "labels/nuclei", mask: str | None = "labels/valid"):
    """``(image, labels, mask or None)`` of a validation volume or of its region ``box``."""

    sl = (...,) if box is None else tuple(slice(a, b) for a, b in zip(*box))
    img = np.asarray(open_volume(path).array[sl])
    gt = np.asarray(open_volume(f"{str(path).rstrip('/')}/{labels}").array[sl])
    m = None
    if mask:
        try:
            m = np.asarray(open_volume(f"{str(path).rstrip('/')}/{mask}").array[sl])
        except BlocksegError:
            m = None
    return img, gt, m


def validation_scores(
    model: BlocksegNet, path: str, normalisation: dict | None, decoder, labels: str = "labels/nuclei",
    mask: str | None = "labels/valid", box=None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Predict, decode and evaluate one validation volume (or its region ``box``); return (scores, prediction)."""
    img, gt, m = read_validation(path, box, labels, mask)
    pred = predict_image(model, img, normalisation)
    return score_prediction(pred, gt, decoder, m), pred


def mean_scores(scores: Sequence[dict]) -> dict:
    """One score record for several validation volumes: the mean of each rate over the volumes
    (each volume weighs the same), counts summed, and the per-volume records under ``volumes``."""
    if len(scores) == 1:
        return dict(scores[0])
    out = {k: float(np.mean([s[k] for s in scores])) for k in ("AP50", "AP75", "AP", "accuracy50", "precision50", "recall50")}
    out.update(n_true=sum(s["n_true"] for s in scores), n_pred=sum(s["n_pred"] for s in scores), volumes=[dict(s) for s in scores])
    return out


def score_prediction(pred: Mapping[str, np.ndarray], gt: np.ndarray, decoder, mask=None) -> dict:
    """Decode a prediction with ``decoder`` and score it: COCO AP-50/75, accuracy at IoU 0.5."""

    seg = segment_array(pred, decoder)
    res = evaluate(gt, seg, mask=mask)
    m50 = next(m for m in res.matching if abs(m["threshold"] - 0.5) < 1e-9)
    return {
        "AP50": float(res.coco["AP50"]),
        "AP75": float(res.coco["AP75"]),
        "AP": float(res.coco["AP"]),
        "accuracy50": float(m50["accuracy"]),
        "precision50": float(m50["precision"]),
        "recall50": float(m50["recall"]),
        "n_true": int(res.overlaps.n_true),
        "n_pred": int(res.overlaps.n_pred),
    }


def _grid_search(cases, name, base, grid, cache):
    keys = sorted(grid)
    best = None
    for vals in itertools.product(*(grid[k] for k in keys)):
        params = {**base, **dict(zip(keys, vals))}
        key = tuple(sorted(params.items()))
        if key not in cache:
            try:
                dec = make_decoder(name, **params)
            except BlocksegError:
                cache[key] = None  # outside the parameter's range
                continue
            cache[key] = mean_scores([score_prediction(pred, gt, dec, mask) for pred, gt, mask in cases])
        s = cache[key]
        if s is not None and (best is None or (s["AP50"], s["AP75"]) > (best[1]["AP50"], best[1]["AP75"])):
            best = (params, s)
    return best


def widen(values: list, at_low: bool, bounds: tuple) -> list:
    """``values`` with one more value beyond the low or high edge.

    One grid step further (the end step, or half the value for a single entry), but never past
    the parameter's range ``bounds`` ``(low, high)`` (None: unbounded on that side; the
    decoder's own, :attr:`blockseg.segment.Decoder.bounds`); near the bound, halfway to it.
    """
    v = sorted(values)
    lo_bound = -np.inf if bounds[0] is None else float(bounds[0])
    hi_bound = np.inf if bounds[1] is None else float(bounds[1])
    step = ((v[1] - v[0]) if at_low else (v[-1] - v[-2])) if len(v) > 1 else (abs(v[0]) / 2 or 0.1)
    if at_low:
        new = v[0] - step
        if new < lo_bound:
            new = (v[0] + lo_bound) / 2
    else:
        new = v[-1] + step
        if new > hi_bound:
            new = (v[-1] + hi_bound) / 2
    new = float(round(new, 6))
    return sorted(set(v) | {new})


def tune_decoder(
    pred: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], gt: np.ndarray | Sequence[np.ndarray],
    name: str, base: dict, grid: Mapping[str, list], mask=None,
    widen_rounds: int = 3, warn: Callable[[str], None] | None = None,
):
    """Best decoder parameters over a grid (all combinations) by (AP-50, AP-75).

    ``pred``, ``gt`` (and ``mask``) may be lists, one entry per validation volume: the
    criterion is then the mean over the volumes (:func:`mean_scores`).

    When the best value of a parameter lies at an edge of its list (of two or more values), the
    list is widened by one step beyond that edge and the new value tried with the other
    parameters at their best (up to ``widen_rounds`` times; values the decoder refuses are
    skipped); a parameter still at an
    edge afterwards is reported through ``warn`` (default: the module's logger), so a tuned
    threshold at the edge of what was searched is never silent. Returns ``(params, scores)``
    with ``scores["grid_edge"]`` listing the parameters left at an edge. A parameter left at
    the end of its decoder's range (:attr:`blockseg.segment.Decoder.bounds`) is reported as
    such: there is nothing beyond it to search.
    """

    warn = warn or log.warning
    if isinstance(pred, Mapping):
        cases = [(pred, gt, mask)]
    else:
        masks = [None] * len(pred) if mask is None else list(mask)
        if not (len(pred) == len(gt) == len(masks)):
            raise ValueError("tune_decoder: pred, gt and mask lists must have one entry per volume")
        cases = list(zip(pred, gt, masks))
    grid = {k: sorted(float(x) for x in v) for k, v in grid.items()}
    cache: dict = {}
    best = _grid_search(cases, name, base, grid, cache)
    if best is None:
        raise BlocksegError(f"decoder tuning: no valid parameters in the grid {grid}")
    for _ in range(widen_rounds):
        changed = False
        for k, v in grid.items():
            if len(v) < 2:
                continue
            picked = best[0][k]
            if picked in (v[0], v[-1]):
                wider = widen(v, picked == v[0], DECODERS[name].bounds[k])  # e.g. D thresholds reach -1
                if wider != v:
                    grid[k], changed = wider, True
                    # the new value against the best of the others (a line search, not the whole
                    # product: the cost stays linear in the number of widened values)
                    # (a tie moves to the new, outer value, so a plateau is followed outwards)
                    added = (set(wider) - set(v)).pop()
                    line = {j: ([best[0][j]] if j != k else [added]) for j in grid}
                    new = _grid_search(cases, name, base, line, cache)
                    if new is not None and (new[1]["AP50"], new[1]["AP75"]) >= (best[1]["AP50"], best[1]["AP75"]):
                        best = new
        if not changed:
            break
    edge = []
    for k, v in grid.items():
        if len(v) < 2:
            continue
        valid = [x for x in v if any(c is not None and dict(key).get(k) == x for key, c in cache.items())]
        picked = best[0][k]
        if not valid or picked not in (min(valid), max(valid)):
            continue
        edge.append(k)
        if picked in DECODERS[name].bounds.get(k, (None, None)):
            # nothing lies beyond the end of the parameter's range: say so, not "widen"
            warn(f"decoder tuning: {k} = {picked:g} is at the end of its range {DECODERS[name].bounds[k]}; "
                 "the decoder accepts nothing beyond it")  # fmt: skip
        else:
            warn(f"decoder tuning: {k} = {picked:g} is at the edge of the searched values {valid}; "
                 "the optimum may lie beyond (widen decoder.tune)")  # fmt: skip
    return best[0], {**best[1], "grid_edge": edge}


def plot_log(log_path, png_path) -> None:
    """PNG of the training loss and the validation AP-50 / AP-75 per iteration from ``train_log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # empty, or cut short by a run killed while appending: the plot goes without it
        if isinstance(rec, dict) and isinstance(rec.get("iteration"), (int, float)):
            recs.append(rec)
    loss = [(r["iteration"], r["loss"]) for r in recs if "loss" in r]
    val = [(r["iteration"], r["validation"]) for r in recs if r.get("validation") and "tuned_decoder" not in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if val:
        ax2 = ax.twinx()
        its = [i for i, _ in val]
        ax2.plot(its, [v["AP50"] for _, v in val], "o-", color="tab:green", label="validation AP-50")
        ax2.plot(its, [v["AP75"] for _, v in val], "s--", color="tab:olive", label="validation AP-75")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation AP")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the loop
#: voxel sizes closer than this (relative, per axis) count as one in training
VOXEL_SIZE_RTOL = 0.01


def training_voxel_size(paths: Sequence[str], voxel_sizes: Sequence[Sequence[float]], rtol: float = VOXEL_SIZE_RTOL) -> tuple:
    """The voxel size a checkpoint records (``predict`` resamples inputs to it): the training
    volumes' common one. Volumes whose voxel sizes differ by more than ``rtol`` are refused in one
    line: the network would learn several scales while the checkpoint could name only one
    (``data.voxel_size`` resamples them to one, :func:`resample_training_data`)."""
    first = np.asarray(voxel_sizes[0], dtype=float)
    for path, vs in zip(paths, voxel_sizes):
        if not np.allclose(vs, first, rtol=rtol, atol=0):
            raise BlocksegError(
                f"training volumes have different voxel sizes: {paths[0]} {tuple(float(v) for v in first)} µm, "
                f"{path} {tuple(float(v) for v in vs)} µm; set data.voxel_size to train at one (volumes are resampled to it)"
            )
    return tuple(float(v) for v in first)


def resample_training_data(cfg: TrainConfig, folder: Path) -> TrainConfig:
    """``cfg`` with every training volume (and a validation volume) at ``cfg.data.voxel_size``.

    A volume whose voxel size differs from it by more than 1 % on some axis is resampled on
    predict's lattice (:func:`blockseg.predict.resample.resample_array`: image linear; labels, mask
    and ignore array nearest) into ``folder/<k>.zarr`` with the same label layout; the others are used as they
    are. A validation region of a resampled volume is scaled with it (a fraction needs
    nothing). Training volumes are read whole (they are crops), so this is done in memory.
    """

    target = np.asarray(cfg.data.voxel_size, dtype=float)
    done: dict[str, tuple[str, np.ndarray]] = {}  # path -> (path to train on, per-axis scale)
    made = 0

    def resampled(path: str) -> tuple[str, np.ndarray]:
        nonlocal made
        key = os.path.abspath(str(path).rstrip("/"))
        if key in done:
            return done[key]
        img = open_volume(path)
        vs = np.asarray(img.voxel_size, dtype=float)
        if np.allclose(vs, target, rtol=VOXEL_SIZE_RTOL, atol=0):
            done[key] = (path, np.ones(3))
            return done[key]
        shape = tuple(max(1, int(round(n * v / t))) for n, v, t in zip(img.shape, vs, target))
        if math.prod(shape) * 16 > 8 * 2**30:
            raise BlocksegError(f"{path}: resampling it to {tuple(target)} µm gives {shape} voxels, too many to resample in "
                                "memory; resample it with the tool that made it")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"{made}.zarr"
        made += 1
        log.info("resampling %s %s at %s µm to %s at %s µm", path, img.shape, tuple(round(float(v), 4) for v in vs), shape,
                 tuple(float(v) for v in target))  # fmt: skip
        create_volume(dst, shape, img.dtype, tuple(target), overwrite=True).array[...] = resample_array(img.array[...], shape)
        for name in (cfg.data.labels, cfg.data.mask, cfg.data.ignore):
            if not name:
                continue
            try:
                lab = open_volume(f"{str(path).rstrip('/')}/{name}")
            except BlocksegError:
                continue  # no mask: none is written either
            data = resample_array(lab.array[...], shape, labels=True)
            if name.startswith("labels/") and name.count("/") == 1:  # an NGFF label image, as in the source
                create_label_volume(dst, name[len("labels/"):], shape, lab.dtype, tuple(target)).array[...] = data
            else:
                create_volume(f"{dst}/{name}", shape, lab.dtype, tuple(target), overwrite=True).array[...] = data
        done[key] = (str(dst), np.asarray(shape, dtype=float) / np.asarray(img.shape, dtype=float))
        return done[key]

    def scaled(v):
        if isinstance(v, str):
            return resampled(v)[0]
        path, f = resampled(v.volume)
        region = v.region
        if region is not None:
            region = [None if r is None else (int(math.floor(r[0] * f[a])), max(int(math.ceil(r[1] * f[a])), int(math.floor(r[0] * f[a])) + 1))
                      for a, r in enumerate(region)]  # fmt: skip
        return ValidationConfig(volume=path, region=region, fraction=v.fraction, axis=v.axis)

    train_paths = [resampled(p)[0] for p in cfg.data.train]
    v = cfg.data.validation
    if v is not None:
        v = [scaled(e) for e in v] if isinstance(v, list) else scaled(v)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": train_paths, "validation": v})})


def training_nucleus_diameter(paths: Sequence[str], labels: str) -> float | None:
    """Median equivalent-sphere diameter (µm) of the nuclei of all training volumes (recorded in
    the checkpoint; ``predict --diameter`` scales other nucleus sizes to it)."""

    vols = [open_volume(f"{str(p).rstrip('/')}/{labels}") for p in paths]
    d = np.concatenate([instance_diameters_um(v.array[...], v.voxel_size) for v in vols] or [np.zeros(0)])
    return float(np.median(d)) if d.size else None


def _metadata(cfg: TrainConfig, normalisation, voxel_size, iteration, decoder, validation, losses, diameter=None) -> dict:
    return {
        "normalisation": normalisation,
        "voxel_size": list(voxel_size),
        "nucleus_diameter_um": diameter,
        "representations": list(cfg.model.representations),
        "training": {"config": cfg.model_dump(mode="json"), "iteration": iteration, "recent_loss": losses},
        "decoder": decoder,
        "validation": validation,
    }


@dataclass
class _Run:
    """One training run's state: what the passes of :func:`train` share (private)."""

    cfg: TrainConfig
    out: Path
    voxel_size: tuple
    device: torch.device
    use_amp: bool
    fmt: torch.memory_format
    decoder: object
    model: BlocksegNet
    val_sets: list
    normalisation: dict
    diameter: float | None
    sampler: CropSampler
    opt: object
    sched: object
    scaler: object
    loss_fn: MultiLoss
    rng: np.random.Generator
    decoder_meta: dict = field(default_factory=dict)
    validation: dict | None = None
    losses: list = field(default_factory=list)
    window: list = field(default_factory=list)

    def save(self, it: int) -> None:
        """Write ``checkpoint.pt`` and ``resume.pt`` (each whole, then renamed over the old one)."""
        cfg, out = self.cfg, self.out
        meta = _metadata(cfg, self.normalisation, self.voxel_size, it, self.decoder_meta, self.validation,
                         self.losses[-cfg.log_every :], self.diameter)  # fmt: skip
        tmp = out / (CHECKPOINT + ".tmp")
        save_checkpoint(tmp, self.model, **meta)
        os.replace(tmp, out / CHECKPOINT)
        state = {
            "magic": RESUME_MAGIC,
            "format": RESUME_FORMAT,
            "iteration": it,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "model_config": cfg.model.model_dump(mode="json"),
            "patch": list(cfg.patch),
        }
        tmp = out / (RESUME + ".tmp")
        torch.save(state, tmp)  # tensors and plain data only: read back with weights_only=True (read_resume)
        os.replace(tmp, out / RESUME)

    def write_log(self, rec: dict) -> None:
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def validation_cases(self) -> list[tuple]:
        """``(prediction, labels, mask)`` of every validation volume with the current weights."""
        self.model.eval()
        cases = []
        for p, b in self.val_sets:
            img, gt, m = read_validation(p, b, self.cfg.data.labels, self.cfg.data.mask)
            cases.append((predict_image(self.model, img, self.normalisation), gt, m))
        return cases

    def validate(self, it: int, cases: list[tuple] | None = None) -> dict | None:
        """Score the validation volumes (logged), back in training mode after."""
        if not self.val_sets:
            return None
        cases = self.validation_cases() if cases is None else cases
        scores = mean_scores([score_prediction(pred, gt, self.decoder, m) for pred, gt, m in cases])
        self.model.train()
        if self.cfg.model.freeze_encoder:
            freeze_norm_statistics(self.model)
        self.write_log({"iteration": it, "validation": scores})
        log.info("iteration %d: validation AP-50 %.3f AP-75 %.3f", it, scores["AP50"], scores["AP75"])
        return scores


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool | None = None,
    callback: Callable[[int, float], None] | None = None,
    dry_run: bool = False,
) -> TrainResult | TrainPlan:
    """Train the network of ``cfg``; see the module docstring for the outputs.

    Runs as named passes: the checks (:func:`_validate_inputs`, nothing written before them),
    the training data (voxel size, resampling), the run's setup (network, crops, optimiser),
    the restored state of an interrupted run, the iterations, then the reduce (last validation,
    decoder tuning, the final checkpoint and the log's plot). Resume is per checkpoint
    (``checkpoint_every`` iterations), not per block: training has no blocks.

    Parameters
    ----------
    cfg : TrainConfig
    resume : bool
        Continue from ``output/resume.pt`` (refused if it is absent). Without it an existing
        ``output/checkpoint.pt`` is refused, so a finished run is never overwritten silently.
    progress : bool, optional
        Rich progress bar; default: only when stderr is a terminal.
    callback : callable, optional
        ``callback(iteration, loss)`` after every iteration.
    dry_run : bool
        Return the :class:`TrainPlan` (:func:`plan_train`) and write nothing.
    """
    if dry_run:
        return plan_train(cfg, resume)
    t_start = time.perf_counter()
    out, state = _validate_inputs(cfg, resume)
    cfg, voxel_size = _training_data(cfg, out)
    run = _set_up(cfg, out, voxel_size, resume)
    start = _restore(run, state) if resume else 0
    if start >= cfg.iterations:
        raise BlocksegError(f"the run already reached {start} of {cfg.iterations} iterations")
    run.decoder_meta = {"name": run.decoder.name, "params": run.decoder.params()}
    _iterate(run, start, progress, callback)
    _finish(run)
    return TrainResult(str(out / CHECKPOINT), cfg.iterations, run.losses, run.validation, time.perf_counter() - t_start)


@dataclass
class TrainPlan:
    """What :func:`train` would do, from the config and the volumes' metadata (``train(...,
    dry_run=True)`` / ``train --dry-run``); nothing is written."""

    output: str
    start: int
    iterations: int
    volumes: list
    voxel_size: tuple
    resampled: bool
    validation: list
    representations: list
    patch: list
    batch_size: int
    parameters: int
    device: str

    def describe(self) -> str:
        begin = f"continues from iteration {self.start}" if self.start else "a new run"
        vs = " x ".join(f"{v:g}" for v in self.voxel_size)
        return "\n".join([
            f"output {self.output}: {begin}, to iteration {self.iterations} (batches of {self.batch_size} crops of {tuple(self.patch)})",
            f"training volumes: {', '.join(self.volumes)}; voxel size {vs} µm"
            + (" (resampled to it first, into OUTPUT/resampled)" if self.resampled else " (the volumes' own)"),
            f"validation: {', '.join(self.validation) or 'none'}",
            f"network: {', '.join(self.representations)}; {self.parameters:,} parameters; device {self.device}",
            "passes: checks, training data, set-up, iterations (checkpoint and resume.pt on schedule), final validation "
            "and decoder tuning, final checkpoint; a rerun with --resume continues from the last checkpoint",
        ])  # fmt: skip

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.__dict__))


def plan_train(cfg: TrainConfig, resume: bool = False) -> TrainPlan:
    """The :class:`TrainPlan` of :func:`train`: the same checks (a resume needs its file, a new
    run a free output), the training voxel size and the network's size; nothing is written."""
    out, state = _validate_inputs(cfg, resume)
    resampled = cfg.data.voxel_size is not None
    if resampled:
        voxel_size = tuple(float(v) for v in cfg.data.voxel_size)
    else:
        voxel_size = training_voxel_size(cfg.data.train, [open_volume(p).voxel_size for p in cfg.data.train])
    start = int(state["iteration"]) if state else 0
    if start >= cfg.iterations:
        raise BlocksegError(f"the run already reached {start} of {cfg.iterations} iterations")
    parameters = sum(p.numel() for p in make_model(cfg).parameters())
    return TrainPlan(str(out), start, cfg.iterations, [str(p) for p in cfg.data.train], voxel_size, resampled,
                     [str(p) for p, _ in validation_sets(cfg)], list(cfg.model.representations), list(cfg.patch),
                     cfg.batch_size, parameters, str(cfg.device))  # fmt: skip


def _validate_inputs(cfg: TrainConfig, resume: bool) -> tuple[Path, dict | None]:
    """The output folder and the resume state (None without ``resume``), checked before
    anything is written: a resume needs its file, a new run a free output that is no input."""

    out = Path(cfg.output)
    ckpt_path, resume_path = out / CHECKPOINT, out / RESUME
    if resume and not resume_path.exists():
        raise BlocksegError(f"cannot resume: {resume_path} does not exist")
    state = read_resume(resume_path) if resume else None  # refused before anything is written
    if cfg.model.init and not resume:
        read_checkpoint(resolve_checkpoint(cfg.model.init))  # a crafted or broken init file: refused now, too
    if not resume and ckpt_path.exists():
        raise BlocksegError(f"{ckpt_path} exists; use --resume to continue it or choose another output")
    # the output folder is never an input, inside or around one, nor someone else's folder
    check_not_input([str(out)], [*cfg.data.train, *(v if isinstance(v, str) else v.volume for v in cfg.data.validation_list()), cfg.model.init])
    if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in (CHECKPOINT, RESUME, "train_log.jsonl")):
        raise BlocksegError(f"{out} exists, is not empty and is not a blockseg training folder; choose another output")
    return out, state


def _training_data(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, tuple]:
    """The training voxel size: the volumes' own (they must agree), or ``data.voxel_size``, to
    which they are resampled first (``OUTPUT/resampled``; the returned config reads those)."""

    if cfg.data.voxel_size is None:
        voxel_size = training_voxel_size(cfg.data.train, [open_volume(p).voxel_size for p in cfg.data.train])
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.voxel_size is not None:
        cfg = resample_training_data(cfg, out / "resampled")
        voxel_size = tuple(float(v) for v in cfg.data.voxel_size)
    return cfg, voxel_size


def _validation_exclusions(cfg: TrainConfig, val_sets: list) -> dict[int, tuple]:
    """Training volume index -> the validation box crops must stay out of (one per volume)."""
    exclude: dict[int, tuple] = {}
    for val_path, val_box in val_sets:
        for k, p in enumerate(cfg.data.train):
            if val_box is not None and os.path.abspath(str(p).rstrip("/")) == os.path.abspath(str(val_path).rstrip("/")):
                if k in exclude:
                    raise BlocksegError(f"data.validation: one validation region per training volume ({p} has two)")
                exclude[k] = val_box
    return exclude


def _set_up(cfg: TrainConfig, out: Path, voxel_size: tuple, resume: bool) -> _Run:
    """Network, decoder, crops, optimiser and random streams, seeded in this order (a run is
    reproduced by its config)."""

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    _seed_all(cfg.seed)
    decoder = make_decoder(cfg.decoder.name, **cfg.decoder.params)
    model = make_model(cfg)
    check_decoder_channels(model.channels, decoder)
    if cfg.model.init and not resume:
        init_from_checkpoint(model, cfg.model.init, cfg.model.freeze_encoder)
    elif cfg.model.freeze_encoder and not cfg.model.init:
        raise BlocksegError("model.freeze_encoder needs model.init (a checkpoint to start from)")
    val_sets = validation_sets(cfg)
    exclude = _validation_exclusions(cfg, val_sets)
    # metadata["normalisation"] (scheme + training statistics) and each volume's affine map
    normalisation, affines = training_normalisation(cfg.normalisation, cfg.data.train)
    if cfg.polarity is not None:  # the model card's polarity (blockseg.predict.polarity)
        normalisation = {**normalisation, "polarity": cfg.polarity}
    diameter = training_nucleus_diameter(cfg.data.train, cfg.data.labels)
    sampler = CropSampler(
        cfg.data.train, cfg.model.representations, cfg.patch, affines, cfg.augment, cfg.data.labels,
        cfg.data.mask, cfg.data.target_context, cfg.data.min_foreground, cfg.targets, exclude,
        cfg.data.cache_targets_mb, ignore=cfg.data.ignore,
    )  # fmt: skip
    # channels-last 3D is several times faster for 3D convolutions on CPU (oneDNN)
    fmt = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    if cfg.model.freeze_encoder:
        freeze_norm_statistics(model)
    opt, sched = make_optimizer(cfg, model)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = MultiLoss(cfg.model.representations, cfg.loss_weights, cfg.cpv_units)
    return _Run(cfg, out, voxel_size, device, use_amp, fmt, decoder, model, val_sets, normalisation, diameter, sampler,
                opt, sched, scaler, loss_fn, np.random.default_rng(cfg.seed))  # fmt: skip


def _restore(run: _Run, state: dict) -> int:
    """Weights, optimiser and random states of the interrupted run; returns its iteration."""

    cfg, resume_path = run.cfg, run.out / RESUME
    if state.get("model_config") != cfg.model.model_dump(mode="json") or state.get("patch") != list(cfg.patch):
        raise BlocksegError(f"{resume_path} belongs to a run with another model or patch")
    loaded, payload = load_checkpoint(run.out / CHECKPOINT, run.device)
    run.model.load_state_dict(loaded.state_dict())
    if cfg.model.freeze_encoder:
        for n in ENCODER_MODULES:
            for prm in getattr(run.model, n).parameters() if hasattr(run.model, n) else ():
                prm.requires_grad_(False)
    run.model.to(memory_format=run.fmt).train()
    try:
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BlocksegError(f"{resume_path}: does not fit this run's optimiser or random state ({first})") from None
    run.normalisation = payload["metadata"]["normalisation"]
    run.sampler.normalisation = volume_affines(run.normalisation, cfg.data.train)
    return int(state["iteration"])


def _progress_bar(total: int, start: int, progress: bool | None):
    """``(bar, task)`` of a rich progress bar, or ``(None, None)`` (default: a terminal only)."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), transient=False,
    )  # fmt: skip
    bar.start()
    return bar, bar.add_task("train", total=total, completed=start, loss=float("nan"))


def _step(run: _Run, it: int) -> float:
    """One optimiser step on a fresh batch of crops; returns the loss."""
    x, t = run.sampler.batch(run.rng, run.cfg.batch_size)
    xt = torch.from_numpy(x).to(run.device, memory_format=run.fmt)
    tt = {k: torch.from_numpy(v).to(run.device) for k, v in t.items()}
    with torch.autocast(run.device.type, enabled=run.use_amp):
        raw = run.model(xt)
    loss, parts = run.loss_fn(raw, tt)
    if not torch.isfinite(loss):
        raise BlocksegError(f"loss became {float(loss)} at iteration {it + 1}; lower the learning rate")
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    value = float(loss.detach())
    run.losses.append(value)
    run.window.append(parts)
    return value


def _log_window(run: _Run, done: int, seconds: float) -> None:
    """One log line: the mean losses of the iterations since the last one."""
    losses, window = run.losses, run.window
    rec = {
        "iteration": done,
        "loss": float(np.mean(losses[-len(window) :])),
        **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
        "lr": float(run.sched.get_last_lr()[0]),
        "seconds": round(seconds, 3),
    }
    run.write_log(rec)
    log.info("iteration %d loss %.4f", done, rec["loss"])
    window.clear()


def _iterate(run: _Run, start: int, progress: bool | None, callback) -> None:
    """The iterations ``start..cfg.iterations``: log, validate and checkpoint on their schedules."""
    cfg = run.cfg
    bar, task = _progress_bar(cfg.iterations, start, progress)
    t_log = time.perf_counter()
    try:
        for it in range(start, cfg.iterations):
            value = _step(run, it)
            done = it + 1
            if callback:
                callback(done, value)
            if bar is not None:
                bar.update(task, completed=done, loss=value)
            if done % cfg.log_every == 0 or done == cfg.iterations:
                _log_window(run, done, time.perf_counter() - t_log)
                t_log = time.perf_counter()
            if cfg.validate_every and done % cfg.validate_every == 0 and done < cfg.iterations:
                run.validation = run.validate(done)
            if done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                run.save(done)
    finally:
        if bar is not None:
            bar.stop()


def _finish(run: _Run) -> None:
    """The reduce: the final weights' validation (its predictions also tune the decoder), the
    final checkpoint and the log's plot."""

    cfg = run.cfg
    final = run.validation_cases() if run.val_sets else []
    run.validation = run.validate(cfg.iterations, final)
    if final and cfg.decoder.tune:
        preds, gts, masks = (list(c) for c in zip(*final))
        params, scores = tune_decoder(preds, gts, run.decoder.name, dict(cfg.decoder.params), cfg.decoder.tune, masks)
        run.decoder_meta = {"name": run.decoder.name, "params": make_decoder(run.decoder.name, **params).params(), "tuned_on": "validation"}
        run.validation = scores
        run.write_log({"iteration": cfg.iterations, "tuned_decoder": run.decoder_meta, "validation": scores})
    run.save(cfg.iterations)
    try:
        plot_log(run.out / LOG, run.out / "train_log.png")
    except Exception as e:  # the plot is a convenience: never fail a finished run for it
        log.warning("could not draw %s: %s", run.out / "train_log.png", e)
