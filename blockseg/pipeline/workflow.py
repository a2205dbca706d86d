"""``blockseg run``: data → predict → segment → evaluate as one resumable job.

A run directory holds everything a run makes, plus its provenance::

    RUN_DIR/run.json                 resolved config, blockseg version, stage history
    RUN_DIR/config.yaml              the resolved config (rerunnable as is)
    RUN_DIR/stages/STAGE.json        per-stage record: fingerprint, status, seconds, memory
    RUN_DIR/image.zarr               the image, when synthesised or imported here
    RUN_DIR/image.zarr/labels/blockseg   the segmentation (NGFF label image of the image)
    RUN_DIR/segmentation.zarr        the segmentation instead, when the image lives elsewhere
    RUN_DIR/predictions.zarr         prediction channels (one NGFF volume each)
    RUN_DIR/evaluation/              evaluation.json, instances.csv, PNG report

Each stage has a *fingerprint*: a hash of its own config section, of the files it depends on,
and of the fingerprints of the stages before it. A stage whose record says ``done`` with the
current fingerprint is skipped; a stage whose record says ``running`` with the current
fingerprint was interrupted and resumes (predict skips its finished blocks); any other stage,
and every stage after it, is redone. The ``done`` record is written last, atomically, so a
half-written output is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import yaml
import zarr

from ..checkpoints import SHIPPED_CHECKPOINTS
from ..evaluate.options import EvaluateOptions
from ..predict.options import PredictOptions
from .config import STAGES, RunConfig
from .layout import RunLayout, checkpoint_path, is_zarr, segment_decoder
from ..errors import BlocksegError
from ..io.storage import has_scheme
from ..io.tables import read_table
from ..io.predictions import DONE_ARRAY
from ..io.safety import check_not_input, output_lock
from ..io.volume import import_volume, open_volume, register_label
from ..segment.params import store_decoder
from .._version import __version__

# The stages themselves (predict: torch; segment, synth: numba; evaluate and its report:
# matplotlib), the cluster and progress modules are imported inside the functions that run them, so
# that reading a run directory (`blockseg info`, the run checks) stays light; `dask_client` is
# looked up at call time, where tests replace it.
from ..provenance import PeakMemory, file_digest, fingerprint, now, write_json_atomic

RUN_MARKER = "run.json"
#: predict settings that change the speed, never the output: not part of the stage's fingerprint
SPEED_KNOBS = ("batch_size", "torch_threads", "prefetch")

#: the demo run (``blockseg demo``; ``configs/demo.yaml`` is the same with a run_dir): a
#: 128×512×512 NucMM-Z-like EM volume, the shipped B, C, D + cpv checkpoint, the BCD decoder
DEMO_CONFIG: dict = {
    "name": "demo",
    "data": {"synth": {"preset": "nucmm-z", "shape": [128, 512, 512], "mode": "em", "seed": 2026}},
    "model": {"checkpoint": "demo"},
    "segment": {"decoder": "bcd"},
    "evaluate": {"enabled": True},
}


@dataclass
class RunResult:
    """What :func:`run` did: layout, per-stage records, evaluation summary (if evaluated)."""

    layout: RunLayout
    stages: dict = field(default_factory=dict)
    evaluation: dict | None = None

    @property
    def ran(self) -> list[str]:
        return [s for s, r in self.stages.items() if r.get("action") in ("run", "resume")]


# ------------------------------------------------------------------------------ fingerprints
#: the keys a config section had before it became its stage's options model (issue 30 goal 4);
#: a key added since enters the fingerprint only when it differs from its default, so a run
#: directory made before keeps its fingerprints (and resumes instead of redoing the stage)
KEYS_BEFORE_OPTIONS = {
    "evaluate": ("enabled", "thresholds", "detection_radius_um", "png"),
    "predict": ("block_shape", "dtype", "channels", "tta", "mc_samples", "batch_size", "runtime", "overlap",
                "pyramid_levels", "scale", "diameter"),
}  # fmt: skip
#: keys whose default the section wrote otherwise before (``predict.overlap: null``, "the API's
#: default"): at their default they are hashed as they were
DEFAULTS_BEFORE_OPTIONS = {"predict": {"overlap": None}}


def section_digest(stage: str, section) -> dict:
    """A config section as its stage's fingerprint hashes it (see :data:`KEYS_BEFORE_OPTIONS`)."""
    dump = section.model_dump(mode="json", by_alias=True)
    before = KEYS_BEFORE_OPTIONS.get(stage)
    if before is None:
        return dump
    default = type(section)().model_dump(mode="json", by_alias=True)
    old = DEFAULTS_BEFORE_OPTIONS.get(stage, {})
    return {k: (old[k] if k in old and v == default[k] else v) for k, v in dump.items() if k in before or v != default[k]}


def fingerprints(cfg: RunConfig, layout: RunLayout) -> dict[str, str]:
    """Fingerprint of every stage (see the module docstring)."""
    d = cfg.data.model_dump(mode="json")
    fp = {"data": fingerprint("data", d)}
    ckpt = checkpoint_path(cfg)
    ck = file_digest(ckpt) if os.path.isfile(ckpt) else ckpt
    # speed knobs change no result (tests/predict/test_speed_knobs.py): changing one redoes nothing
    predict_cfg = {k: v for k, v in section_digest("predict", cfg.predict).items() if k not in SPEED_KNOBS}
    fp["predict"] = fingerprint("predict", fp["data"], ck, predict_cfg)
    fp["segment"] = fingerprint("segment", fp["predict"], cfg.segment.model_dump(mode="json"))
    fp["evaluate"] = fingerprint("evaluate", fp["segment"], section_digest("evaluate", cfg.evaluate))
    return fp


def _read_record(layout: RunLayout, stage: str) -> dict | None:

    path = layout.stage_record(stage)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # a damaged record counts as missing: the stage is redone


def plan(
    cfg: RunConfig, from_stage: str | None = None, only: str | None = None, fps: dict[str, str] | None = None
) -> dict[str, str]:
    """What each stage will do: ``skip``, ``resume`` or ``run``.

    ``from_stage`` forces that stage and the later ones to run; ``only`` restricts the run to
    one stage (its inputs must be complete). ``fps``: the stage fingerprints, if already
    computed (:func:`fingerprints` hashes the checkpoint file).
    """
    for name, v in (("--from", from_stage), ("--only", only)):
        if v is not None and v not in STAGES:
            raise BlocksegError(f"{name} must be one of {list(STAGES)}, got {v!r}")
    layout = RunLayout.of(cfg)
    fps = fps or fingerprints(cfg, layout)
    actions: dict[str, str] = {}
    upstream_changed = False
    for stage in STAGES:
        rec = _read_record(layout, stage)
        same = rec is not None and rec.get("fingerprint") == fps[stage]
        if stage == "evaluate" and (not cfg.evaluate.enabled or layout.ground_truth is None):
            actions[stage] = "disabled"
            continue
        if from_stage is not None and STAGES.index(stage) >= STAGES.index(from_stage):
            act = "run"
        elif upstream_changed or not same:
            act = "resume" if same and rec.get("status") == "running" else "run"
        else:
            act = "skip" if rec.get("status") == "done" else "resume"
        if act != "skip":
            upstream_changed = True
        actions[stage] = act
    if only is not None:
        for stage in STAGES:
            if stage == only:
                continue
            if STAGES.index(stage) < STAGES.index(only) and actions[stage] not in ("skip", "disabled"):
                raise BlocksegError(f"--only {only}: stage {stage} is not complete for this config; run it first")
            if actions[stage] != "disabled":
                actions[stage] = "skip"
        if actions[only] == "skip":
            actions[only] = "run"
    return actions


# ------------------------------------------------------------------------------ stages
def _stage_data(cfg: RunConfig, layout: RunLayout, client, resume: bool) -> dict:

    d = cfg.data
    if d.synth is not None:
        from ..synth import preset_params, synthesize

        s = d.synth
        params = preset_params(
            s.preset, shape=tuple(s.shape), density=s.density, radius=s.radius, mode=s.mode, voxel_size=s.voxel_size,
            mask=s.mask, seed=s.seed,
        )  # fmt: skip
        summary = synthesize(layout.image, params, chunks=d.chunks, client=client, overwrite=True, progress=True,
                             pyramid_levels=d.pyramid_levels)  # fmt: skip
        return {"synth": summary.to_dict()}
    out = {}
    img = None
    if not is_zarr(d.image):
        img = import_volume(d.image, layout.image, d.voxel_size, d.image_key, d.chunks, overwrite=True, level=d.level,
                            channel=d.channel, timepoint=d.timepoint, pyramid_levels=d.pyramid_levels)  # fmt: skip
        out["imported_image"] = layout.image
    img = open_volume(layout.image) if img is None else img
    if d.ground_truth is not None and layout.ground_truth != d.ground_truth:
        import_volume(d.ground_truth, layout.ground_truth, img.voxel_size, d.ground_truth_key, img.chunks, overwrite=True,
                      labels=True, pyramid_levels=d.pyramid_levels)  # fmt: skip
        out["imported_ground_truth"] = layout.ground_truth
    if d.mask is not None and layout.mask != d.mask:
        import_volume(d.mask, layout.mask, img.voxel_size, None, img.chunks, overwrite=True, labels=True,
                      pyramid_levels=d.pyramid_levels)  # fmt: skip
    for name, path in (("ground truth", layout.ground_truth), ("mask", layout.mask)):
        shape = open_volume(path).shape if path is not None else img.shape
        if shape != img.shape:
            raise BlocksegError(f"{name} {path} has shape {shape}, the image {img.shape}")
    out["image"] = {"path": layout.image, "shape": list(img.shape), "voxel_size": list(img.voxel_size),
                    "voxel_size_source": img.voxel_size_source, "format": img.format}  # fmt: skip
    return out


def _stage_predict(cfg: RunConfig, layout: RunLayout, client, resume: bool) -> dict:
    from ..predict import predict

    p = cfg.predict
    if resume and not _has_done_markers(layout.predictions):
        # interrupted before predict made its done-markers (or with none left): nothing to
        # keep, and predict would refuse the store as not resumable
        resume = False
    report = predict(
        layout.image,
        checkpoint_path(cfg),
        layout.predictions,
        client=client,
        # no segment.decoder: the one the segment stage takes (the checkpoint's recommendation)
        decoder=cfg.segment.decoder or segment_decoder(cfg).decoder.name,
        overwrite=not resume,
        resume=resume,
        **p.model_dump(include=set(PredictOptions.model_fields)),
    )
    return report.to_dict() if hasattr(report, "to_dict") else dict(report or {})


def _has_done_markers(predictions: str) -> bool:
    """Whether a prediction store has predict's per-block done-markers."""


    try:
        zarr.open_array(f"{predictions.rstrip('/')}/{DONE_ARRAY}", mode="r")
    except Exception:  # missing store, missing or damaged marker array
        return False
    return True


def _stage_segment(cfg: RunConfig, layout: RunLayout, client, resume: bool) -> dict:
    from ..segment import segment

    s = cfg.segment
    # the store's copy of the checkpoint's recommendation: its sizes are in this image's voxels
    # when predict resampled (run() checked the decoder's channels against the network)
    stored, tuning = store_decoder(layout.predictions), None
    if s.tune is not None:  # tuned here, used for this run only: the store keeps the checkpoint's
        from .tune import tune_store

        res = tune_store(layout.predictions, s.tune.labels, s.tune.region, decoder=s.decoder, grid=s.tune.grid, write=False)
        stored, tuning = res.recommendation(s.tune.labels, stored), {**res.to_dict(), "text": res.summary()}
    choice = segment_decoder(cfg, stored=stored)
    under_image = layout.labels.startswith(layout.image.rstrip("/") + "/labels/")
    if under_image:

        zarr.open_group(os.path.dirname(layout.labels), mode="a")  # IMAGE/labels
    report = segment(
        layout.predictions, layout.labels, choice, block_shape=s.block_shape, halo=s.halo,
        client=client, overwrite=True, pyramid_levels=s.pyramid_levels, tile_voxels=s.tile_voxels, keep_work=s.keep_work,
        progress=True,
    )  # fmt: skip
    if under_image:

        register_label(layout.image, os.path.basename(layout.labels))
    # its "decoder": name, parameters and where each came from
    return {**report.to_dict(), **({"tuning": tuning} if tuning else {})}


def _stage_evaluate(cfg: RunConfig, layout: RunLayout, client, resume: bool) -> dict:
    from ..evaluate import evaluate, write_report
    from .report import overview_png

    e = cfg.evaluate
    table = read_table(os.path.join(layout.labels, "instances.csv"))
    scores = np.c_[table["id"], table["score"]] if len(table.get("id", ())) else None
    options = e.model_dump(include=set(EvaluateOptions.model_fields) - {"centroid_points", "png"})
    result = evaluate(
        layout.ground_truth, layout.labels, layout.mask, scores=scores, points="centroids" if e.centroid_points else None,
        client=client, progress=True, **options,
    )  # fmt: skip
    inputs = [layout.ground_truth, layout.labels, layout.mask]
    paths = write_report(result, layout.evaluation, png=e.png, overwrite=True, inputs=inputs)
    if e.png:
        paths["overview"] = os.path.join(layout.evaluation, "overview.png")
        overview_png(layout.image, layout.ground_truth, layout.labels, result, paths["overview"], mask=layout.mask)
    summary = result.summary()
    return {
        "paths": paths,
        "avAP": summary["avAP"],
        "AP50": summary["coco"].get("AP50"),
        "AP75": summary["coco"].get("AP75"),
        "n_true": summary["n_true"],
        "n_pred": summary["n_pred"],
        "matching": summary["matching"],
    }


STAGE_FUNCS: dict[str, Callable] = {
    "data": _stage_data,
    "predict": _stage_predict,
    "segment": _stage_segment,
    "evaluate": _stage_evaluate,
}


# ------------------------------------------------------------------------------ run
def run_inputs(cfg: RunConfig) -> list[str]:
    """The user's files a run reads (image, ground truth, mask, checkpoint): never written."""
    d = cfg.data
    ins = [p for p in (d.image, d.ground_truth, d.mask) if p is not None]
    if cfg.model.checkpoint and cfg.model.checkpoint not in SHIPPED_CHECKPOINTS:
        ins.append(cfg.model.checkpoint)
    return ins


def _check_run_dir(cfg: RunConfig, layout: RunLayout) -> None:
    """Refuse a run_dir that may not be used (creates nothing)."""

    root = layout.root
    marker = os.path.join(root, RUN_MARKER)
    # run_dir holds every output of the run: it may not be, hold, or lie inside an input
    check_not_input([root], run_inputs(cfg))
    if os.path.isdir(root) and os.listdir(root) and not os.path.exists(marker):
        raise BlocksegError(
            f"run_dir {root} exists, is not empty and is not a blockseg run directory; choose another "
            "(it is never taken over, even with --overwrite)"
        )
    if os.path.exists(root) and not os.path.isdir(root):
        raise BlocksegError(f"run_dir {root} exists and is not a directory")


def _claim_run_dir(cfg: RunConfig, layout: RunLayout, overwrite: bool) -> None:
    root = layout.root
    _check_run_dir(cfg, layout)
    try:
        os.makedirs(layout.stages_dir, exist_ok=True)
    except OSError as e:
        raise BlocksegError(f"cannot create run_dir {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK):
        raise BlocksegError(f"run_dir {root} is not writable")
    if overwrite:
        for stage in STAGES:
            rec = layout.stage_record(stage)
            if os.path.exists(rec):
                os.remove(rec)


def _write_provenance(cfg: RunConfig, layout: RunLayout, history: list[dict]) -> None:



    marker = os.path.join(layout.root, RUN_MARKER)
    previous = []
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                previous = json.load(f).get("history", [])
        except (OSError, ValueError):
            previous = []
    write_json_atomic(
        marker,
        {"blockseg_version": __version__, "python": sys.version.split()[0], "config": cfg.resolved(), "history": previous + history},
    )
    with open(os.path.join(layout.root, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.resolved(), f, sort_keys=False)


def _cluster_config(cfg: RunConfig):
    from ..runtime.cluster import ClusterConfig

    c = cfg.cluster
    return ClusterConfig(
        scheduler=c.scheduler, n_workers=c.workers, threads_per_worker=c.threads_per_worker,
        memory_limit=c.memory_limit or "auto", gpu=c.gpu, dashboard=c.dashboard,
    )  # fmt: skip


def run(
    cfg: RunConfig,
    from_stage: str | None = None,
    only: str | None = None,
    overwrite: bool = False,
    client=None,
    log: Callable[[str], None] | None = None,
    cluster=None,
) -> RunResult:
    """Run (or resume) every stage of a config; see the module docstring.

    Parameters
    ----------
    cfg : RunConfig
        From :func:`blockseg.pipeline.config.load_config` or :func:`blockseg.pipeline.config.parse_config`.
    from_stage, only : str, optional
        Redo ``from_stage`` and everything after it / run only that stage.
    overwrite : bool
        Forget every stage record and redo everything (also lets a run take over a non-empty
        folder that is not a blockseg run directory).
    client : distributed.Client, optional
        Use this client instead of the config's cluster.
    cluster : ClusterConfig, optional
        Start (or connect to) this cluster instead of the config's ``cluster`` section. It
        passes :func:`blockseg.runtime.preflight.preflight` before run_dir is created.
    log : callable, optional
        Called with one line per stage event (default: print to stderr).

    Returns
    -------
    RunResult
    """
    from ..runtime.cluster import dask_client

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    layout = RunLayout.of(cfg)
    if cfg.data.image is not None and not os.path.exists(cfg.data.image) and not has_scheme(cfg.data.image):
        raise BlocksegError(f"data.image {cfg.data.image} does not exist")
    for key in ("ground_truth", "mask"):
        p = getattr(cfg.data, key)
        if p is not None and not os.path.exists(p) and not has_scheme(p):
            raise BlocksegError(f"data.{key} {p} does not exist")
    from .runcheck import check_config

    # fail before any work: a missing or foreign checkpoint, a decoder that reads channels the
    # network does not predict, a geometry that does not fit the data's shape and chunks, ...
    _, choice = check_config(cfg)
    _check_run_dir(cfg, layout)

    work = overwrite or any(a not in ("skip", "disabled") for a in plan(cfg, from_stage, only).values())
    with contextlib.ExitStack() as stack:
        # one run per run directory: a second one is refused at once, naming this one
        stack.enter_context(output_lock(layout.root))
        if client is None and work:  # checked (workers, paths, versions) before run_dir is made
            # what tasks read (files in other formats are imported by this process)
            inputs = [p for p in (*run_inputs(cfg), checkpoint_path(cfg)) if p and p != "demo" and is_zarr(p)]
            inputs.append(checkpoint_path(cfg))
            client = stack.enter_context(
                dask_client(cluster or _cluster_config(cfg), quiet=True, inputs=inputs, outputs=[layout.root])
            )
        return _run(cfg, layout, from_stage, only, overwrite, client, log, choice)


def _run(cfg, layout, from_stage, only, overwrite, client, log, choice) -> RunResult:
    """:func:`run` once the cluster (if any) is up and checked."""
    _claim_run_dir(cfg, layout, overwrite)
    # mark the folder as a run directory before any work: a driver killed during the first
    # run must leave a folder the rerun recognises (and resumes) rather than refuses
    _write_provenance(cfg, layout, [])
    fps = fingerprints(cfg, layout)
    actions = plan(cfg, from_stage, only, fps)
    if actions["segment"] in ("run", "resume"):  # the parameters and where each came from
        before = " (before segment.tune)" if cfg.segment.tune is not None else ""
        log(choice.describe().replace("decoder ", f"[segment] decoder{before} ", 1))
    result = RunResult(layout)
    history = []

    def body(client):
        for stage in STAGES:
            act = actions[stage]
            if act in ("skip", "disabled"):
                log(f"[{stage}] {'skipped (complete)' if act == 'skip' else 'disabled (no ground truth)'}")
                rec = _read_record(layout, stage) if act == "skip" else None
                result.stages[stage] = {"action": "skipped" if act == "skip" else "disabled", **(rec or {})}
                continue
            _check_predecessor(layout, stage, fps, actions)
            log(f"[{stage}] {'resuming' if act == 'resume' else 'running'} ...")
            rec = {"stage": stage, "fingerprint": fps[stage], "status": "running", "started": now()}
            write_json_atomic(layout.stage_record(stage), rec)
            t0 = time.perf_counter()
            with PeakMemory() as mem:
                out = STAGE_FUNCS[stage](cfg, layout, client, act == "resume")
            rec.update(status="done", finished=now(), seconds=round(time.perf_counter() - t0, 2), **mem.to_dict(), result=out)
            write_json_atomic(layout.stage_record(stage), rec)  # written last: the stage is complete
            result.stages[stage] = {"action": act, **rec}
            history.append({k: rec[k] for k in ("stage", "fingerprint", "started", "finished", "seconds", "peak_rss_total_gib", "peak_rss_worker_gib")})
            log(f"[{stage}] done in {rec['seconds']:.1f} s (peak RSS {rec['peak_rss_total_gib']:.2f} GiB)")
            if stage == "segment" and out.get("tuning"):
                log(f"[segment] {out['tuning']['text']}; used for this run")
            if stage == "predict" and act == "resume" and {"blocks", "computed", "voxels", "plan"} <= set(out):
                from ..runtime.progress import reuse_summary

                shape = out["plan"]["shape"]
                log(f"[{stage}] {reuse_summary(out['blocks'], out['computed'], int(np.prod(shape)), out['voxels'], out.get('reused_pass1', 0))}")
        ev = result.stages.get("evaluate", {})
        result.evaluation = ev.get("result") if ev.get("status") == "done" else None

    try:
        body(client)
    finally:
        _write_provenance(cfg, layout, history)
    return result


def _check_predecessor(layout: RunLayout, stage: str, fps: dict[str, str], actions: dict[str, str]) -> None:
    """Refuse to start ``stage`` unless the stage before it is recorded complete for this config.

    The stage loop runs them in order, so this holds unless a record changed under the run
    (another process, a hand edit): a stage never reads an input its producer did not finish.
    """
    k = STAGES.index(stage)
    if k == 0:
        return
    before = STAGES[k - 1]
    if actions.get(before) == "disabled":
        return
    rec = _read_record(layout, before)
    if rec is None or rec.get("status") != "done" or rec.get("fingerprint") != fps[before]:
        state = "missing" if rec is None else ("for another config" if rec.get("fingerprint") != fps[before] else rec.get("status"))
        raise BlocksegError(
            f"[{stage}] the {before} stage is not complete ({layout.stage_record(before)}: {state}); "
            f"rerun without --only to redo it"
        )


def ap_table(evaluation: dict) -> str:
    """Plain-text table of a run's evaluation: IoU threshold, accuracy, precision, recall, F1."""
    rows = [f"{'IoU':>5} {'accuracy':>9} {'precision':>9} {'recall':>7} {'F1':>6} {'TP':>6} {'FP':>6} {'FN':>6}"]
    for m in evaluation["matching"]:
        rows.append(
            f"{m['threshold']:>5.2f} {m['accuracy']:>9.3f} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
            f"{m['tp']:>6d} {m['fp']:>6d} {m['fn']:>6d}"
        )
    ap50, ap75 = evaluation.get("AP50"), evaluation.get("AP75")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows.append(
        f"avAP (mean accuracy) {evaluation['avAP']:.3f}   COCO AP-50 {fmt(ap50)}   AP-75 {fmt(ap75)}   "
        f"GT {evaluation['n_true']}  predicted {evaluation['n_pred']}"
    )
    return "\n".join(rows)


__all__: Sequence[str] = ["RunLayout", "RunResult", "ap_table", "fingerprints", "plan", "run"]
