"""What a path holds, in a few human-readable lines (``blockseg info``) or as plain data.

:func:`summarise` recognises five kinds of thing blockseg reads or writes and describes each:

* ``checkpoint`` -- a ``.pt`` file (or ``demo``): architecture, parameter count,
  representations, patch, voxel size, normalisation, the recommended decoder and its tuned
  thresholds, validation scores;
* ``run`` -- a run directory (has ``run.json``): its stages and their status, the evaluation;
* ``predictions`` -- a prediction store: channels with kind and dtype, size, the decoder
  parameters stored with it, how complete it is;
* ``labels`` -- a label volume (NGFF ``image-label``): instances, how it was segmented;
* ``image`` -- any other readable volume: shape, dtype, chunks, voxel size, pyramid.

:func:`render` turns a summary into text.
"""

from __future__ import annotations

import json
import os
from typing import Any

import zarr

from ..checkpoints import SHIPPED_CHECKPOINTS
from ..errors import BlocksegError
from ..io.storage import has_scheme
from ..io.tables import count_rows
from ..io.predictions import DONE_ARRAY, open_predictions, prediction_kind, read_metadata
from ..io.volume import open_volume
from ..segment import DECODERS
from ..segment.params import checkpoint_decoder
from .config import STAGES, parse_config
from .workflow import plan


def _disk_bytes(path: str) -> int | None:
    """Bytes a local file or folder takes (None for a URL)."""
    if has_scheme(path):
        return None
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _params(params: dict, sources: dict | None = None) -> str:
    """``seed_b=0.95 fg_b=0.85 [store]; fg_b=0.8 [user]``: parameters grouped by source."""
    groups: dict[str, list[str]] = {}
    for k, v in params.items():
        groups.setdefault((sources or {}).get(k, ""), []).append(f"{k}={v:g}")
    return "; ".join(" ".join(items) + (f" [{src}]" if src else "") for src, items in groups.items())


def _xyz(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _blockseg_attrs(path: str) -> dict:
    try:
        return dict(zarr.open_group(path, mode="r").attrs.get("blockseg", {}))
    except Exception:
        return {}


def kind_of(path: str) -> str:
    """``checkpoint``, ``run``, ``predictions``, ``labels`` or ``image`` (see the module docstring)."""
    bare = path.split("#")[0]

    if path in SHIPPED_CHECKPOINTS and not os.path.exists(path):
        return "checkpoint"  # a shipped one by name (demo, fluo, ...), as in run configs and predict
    if not has_scheme(bare) and not os.path.exists(bare):
        raise BlocksegError(f"{path}: no such file or directory")
    if os.path.isdir(bare) and os.path.isfile(os.path.join(bare, "run.json")):
        return "run"
    from ..models.bioimageio import is_package  # torch (the models package): loaded only when the path may be a network

    if is_package(bare):
        return "checkpoint"  # a bioimage.io model package (blockseg.models.bioimageio)
    if os.path.isfile(bare) and bare.endswith((".pt", ".pth", ".ckpt", ".onnx", ".ts", ".jit", ".torchscript")):
        return "checkpoint"
    if os.path.isfile(bare) and bare.endswith((".yaml", ".yml", ".json")) and _is_sidecar(bare):
        return "checkpoint"  # a foreign network's sidecar (blockseg.models.foreign)

    if bare == path and (read_metadata(bare) or {}).get("channels"):  # damaged metadata: one line naming the key
        return "predictions"
    return "volume"  # image or labels: told apart once opened


def _is_sidecar(path: str) -> bool:
    """Whether a YAML / JSON file is a foreign network's sidecar (it names the network's outputs)."""
    from ..models.sidecar import read_sidecar  # torch, as above

    try:
        return "outputs" in read_sidecar(path)
    except BlocksegError:
        return False


# ---------------------------------------------------------------------------- checkpoint
def checkpoint_summary(path: str) -> dict:
    from ..models import channels_of, read_checkpoint, resolve_checkpoint  # noqa: F401  (torch, as above)
    from ..models.foreign import is_foreign

    file = resolve_checkpoint(path)
    if is_foreign(file):
        return model_summary(file)
    payload = read_checkpoint(file)
    meta = payload.get("metadata") or {}
    from ..models import build_model

    # trainable parameters (the state dict also holds buffers such as batch-norm statistics)
    n_params = int(sum(p.numel() for p in build_model(payload["architecture"], **payload["config"]).parameters()))
    training = meta.get("training") or {}
    return {
        "kind": "checkpoint",
        "path": file,
        "bytes": _disk_bytes(file),
        "blockseg_version": payload.get("blockseg_version"),
        "architecture": payload.get("architecture"),
        "config": payload.get("config"),
        "parameters": n_params,
        "representations": list(payload.get("representations") or []),
        "channels": list(channels_of(payload.get("representations") or [])),
        "geometry": payload.get("geometry"),
        "voxel_size": meta.get("voxel_size"),
        "nucleus_diameter_um": meta.get("nucleus_diameter_um"),
        "normalisation": meta.get("normalisation"),
        "decoder": checkpoint_decoder(payload, file),
        "validation": meta.get("validation"),
        "iterations": training.get("iteration"),
    }


def _render_checkpoint(s: dict) -> list[str]:
    g = s.get("geometry") or {}
    lines = [
        f"checkpoint {s['path']} ({_size(s['bytes'])}, blockseg {s.get('blockseg_version') or '?'})",
        f"  network: {s['architecture']}, {s['parameters']:,} parameters"
        + (f", trained {s['iterations']} iterations" if s.get("iterations") is not None else ""),
        f"  representations: {', '.join(s['representations'])} -> channels {', '.join(s['channels'])}",
    ]
    if g:
        lines.append(f"  input patch {_xyz(g.get('input_patch', []))}, context margin {_xyz(g.get('margin', []))}, valid crop {_xyz(g.get('crop', []))}")
    vs = s.get("voxel_size")
    lines.append(f"  voxel size (training data): {_xyz(vs) + ' µm' if vs else 'not recorded'}")
    diameter = s.get("nucleus_diameter_um")
    lines.append(f"  nucleus diameter (training data, median): {f'{diameter:.3g} µm' if diameter else 'not recorded (predict --diameter needs it)'}")
    n = s.get("normalisation")
    if n and n.get("scheme") == "percentile":
        med = (n.get("summary") or {}).get("median")
        lines.append(f"  normalisation: percentile, each volume's {n.get('low', 1):g} % and {n.get('high', 99.8):g} % map to 0 and 1"
                     + (f" (training volumes' normalised median {med:.3g})" if med is not None else ""))  # fmt: skip
    elif n:
        lines.append(f"  normalisation: fixed map in raw units, {n.get('method', 'affine')}, (x - {n.get('offset', 0):.4g}) / {n.get('scale', 1):.4g}")
    else:
        lines.append("  normalisation: none recorded")
    d = s.get("decoder")
    if d:
        params = _params(d["params"])
        tuned = f" (tuned on the {d['tuned_on']} volume)" if d.get("tuned_on") else ""
        lines.append(f"  decoder: {d['name']} {params}{tuned}; predict stores it with the predictions, segment starts from it")
    else:
        lines.append("  decoder: none recommended (segment uses the decoder's defaults)")
    v = s.get("validation")
    if v:
        lines.append("  validation: " + ", ".join(f"{k} {val:.3f}" if isinstance(val, float) else f"{k} {val}" for k, val in v.items()))
    return lines


def model_summary(path: str) -> dict:
    """A foreign network (TorchScript / ONNX with its sidecar): what the engine will use of it."""
    from ..models import build_model
    from ..models.foreign import describe

    d = describe(path)
    payload = d.payload()
    net = build_model(payload["architecture"], **payload["config"])
    out = {"kind": "model", "path": os.path.abspath(path), "bytes": _disk_bytes(d.weights), **d.to_dict()}
    out["channels"] = list(net.channels)
    out["kinds"] = dict(net.kinds)
    out["parameters"] = net.parameter_count()
    out["decoder"] = checkpoint_decoder(payload, d.weights)

    implied = next((name for name, dec in DECODERS.items() if set(dec.channels) <= set(net.channels)), None)
    out["implied_decoder"] = (f"{implied} (the first decoder its channels feed; segment picks it)" if implied else
                              "none reads these channels (predict stores them all)")  # fmt: skip
    return out


_TRUST = {
    "torchscript": "TorchScript is a program: open only files from sources you trust",
    "onnx": "ONNX is a data-only graph run by onnxruntime",
}


def _render_model(s: dict) -> list[str]:
    src = s.get("sources") or {}
    notes = s.get("notes") or {}

    def tag(key: str) -> str:
        note = notes.get(key)
        return f" [{src.get(key, '?')}{': ' + note if note else ''}]"

    n = s.get("normalisation")
    if not n:
        norm = "none: raw values are fed to the network"
    elif n.get("scheme") == "percentile":
        norm = f"percentile: each volume's {n['low']:g} % and {n['high']:g} % map to 0 and 1"
    else:
        norm = f"fixed map in raw units, (x - {n['offset']:.4g}) / {n['scale']:.4g}"
    meaning = ", ".join(f"{i}: {o}" for i, o in enumerate(s["outputs"]))
    stored = ", ".join(f"{c} ({s['kinds'][c]})" for c in s["channels"])
    lines = [
        (f"bioimage.io package {s['package']}: " if s.get("package") else "")
        + f"{s['format']} network {s['weights']} ({_size(s['bytes'])}, "
        f"{format(s['parameters'], ',') if s['parameters'] is not None else '?'} parameters); "
        f"{'rdf' if s.get('package') else 'sidecar'} {s['sidecar']}",
        f"  trust: {_TRUST[s['format']]}",
        f"  output channels: {meaning}{tag('outputs')}",
        f"  stored as: {stored}; activation "
        + ", ".join(f"{r} {a}" for r, a in s["activation"].items()) + tag("activation"),
        f"  patch {_xyz(s['patch'])}{tag('patch')}",
        f"  margin {_xyz(s['margin'])}{tag('margin')}",
        f"  crop {_xyz(s['crop'])} per side (halo {_xyz(s['halo'])}){tag('crop')}; patch sizes multiples of "
        f"{_xyz(s['divisor'])}{tag('divisor')}",
        f"  normalisation: {norm}{tag('normalisation')}",
        f"  voxel size: {_xyz(s['voxel_size']) + ' µm' if s.get('voxel_size') else 'not given'}{tag('voxel_size')}",
    ]
    d = s.get("decoder")
    lines.append(f"  decoder: {d['name']} {_params(d['params'])}{tag('decoder')}" if d else f"  decoder: {s['implied_decoder']}")
    return lines


# ---------------------------------------------------------------------------- predictions
def predictions_summary(path: str) -> dict:
    vols = open_predictions(path, unfinished_ok=True)  # info shows how far an unfinished store got
    attrs = _blockseg_attrs(path)["predictions"]
    first = next(iter(vols.values()))
    channels = []
    for name, v in vols.items():
        channels.append({"name": name, "kind": prediction_kind(v, name), "dtype": str(v.dtype),
                         "bytes": _disk_bytes(f"{path.rstrip('/')}/{name}")})  # fmt: skip
    run = attrs.get("run") or {}
    done = None
    try:
        markers = zarr.open_array(f"{path.rstrip('/')}/{DONE_ARRAY}", mode="r")[...]
        done = [int(markers.sum()), int(markers.size)]
    except Exception:
        pass
    return {
        "kind": "predictions",
        "path": path,
        "shape": list(first.shape),
        "chunks": list(first.chunks),
        "voxel_size": list(first.voxel_size),
        "channels": channels,
        "bytes": _disk_bytes(path),
        "bytes_uncompressed": int(sum(v.array.nbytes for v in vols.values())),
        "decoder": attrs.get("decoder"),
        "blocks_done": done,
        "complete": attrs.get("complete"),
        "run": {k: run.get(k) for k in ("image", "checkpoint_sha256", "patch", "patch_choice", "lattice_snap", "overlap", "blending", "tta", "mc_samples", "block_shape") if k in run},
    }


def _render_predictions(s: dict) -> list[str]:
    lines = [
        f"prediction store {s['path']} ({_size(s['bytes'])} on disk, {_size(s['bytes_uncompressed'])} uncompressed)",
        f"  shape {_xyz(s['shape'])}, chunks {_xyz(s['chunks'])}, voxel size {_xyz(s['voxel_size'])} µm",
        "  channels: " + ", ".join(f"{c['name']} ({c['kind']}, {c['dtype']})" for c in s["channels"]),
    ]
    d = s.get("decoder")
    if d:
        params = _params(d["params"])
        ckpt = f"checkpoint {os.path.basename(d['checkpoint'])}" if d.get("checkpoint") else ""
        if d.get("from") == "tuned":  # blockseg tune wrote it
            origin = f" tuned on {d.get('tuned_on', 'annotated nuclei')}" + (f" (starting from {ckpt})" if ckpt else "")
        else:
            origin = f" from {ckpt}" if ckpt else ""
        lines.append(f"  decoder: {d['name']} {params}{origin}; segment's defaults (-p NAME=VALUE changes one)")
    else:
        lines.append("  decoder: none stored (segment uses the decoder's defaults)")
    if s.get("blocks_done"):
        a, b = s["blocks_done"]
        unfinished = a != b or s.get("complete") is False
        more = "" if a != b or not unfinished else ", multiscale levels unfinished"
        lines.append(f"  blocks done: {a} of {b}{more}" + (" (unfinished: rerun predict to resume)" if unfinished else ""))
    r = s.get("run") or {}
    if r:
        mode = (r.get("patch_choice") or {}).get("mode")
        lattice = f" ({mode}{', block-aligned lattice' if r.get('lattice_snap') is False else ''})" if mode else ""
        lines.append(
            f"  predicted from {r.get('image', '?')} with checkpoint sha256 {r.get('checkpoint_sha256', '?')}, "
            f"patch {_xyz(r.get('patch', []))}{lattice} in blocks {_xyz(r.get('block_shape', []))}, "
            f"{r.get('blending', '?')} blending, tta {r.get('tta')}"
        )
    return lines


# ---------------------------------------------------------------------------- volumes
def _is_label(vol) -> bool:
    try:
        attrs = zarr.open_group(vol.path.split("#")[0], mode="r").attrs
    except Exception:
        return False
    ome = dict(attrs.get("ome", {}))
    return "image-label" in ome or "image-label" in dict(attrs)


def volume_summary(path: str, key: str | None = None, block=None, halo=0) -> dict:

    vol = open_volume(path, key=key)
    grid = vol.grid(block, halo)
    bare = path.split("#")[0]
    out: dict[str, Any] = {
        "kind": "labels" if _is_label(vol) else "image",
        "path": path,
        "format": vol.format,
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": list(vol.chunks),
        "write_unit": list(vol.write_unit),
        "voxel_size": list(vol.voxel_size),
        "voxel_size_source": vol.voxel_size_source,
        "selection": dict(vol.selection),
        "levels": [list(s) for s in vol.levels],
        "bytes": _disk_bytes(bare),
        "bytes_uncompressed": int(vol.array.nbytes) if hasattr(vol.array, "nbytes") else None,
        "grid": {"block_shape": list(grid.block_shape), "halo": list(grid.halo), "blocks": len(grid),
                 "grid_shape": list(grid.grid_shape), "repr": repr(grid)},  # fmt: skip
    }
    if out["kind"] == "labels":
        attrs = _blockseg_attrs(bare)
        report = {}
        try:
            report = dict(zarr.open_group(bare, mode="r").attrs.get("blockseg_report", {}))
        except Exception:
            pass
        n = report.get("n_instances")
        table = os.path.join(bare, "instances.csv")
        if n is None and os.path.isfile(table):
            n = count_rows(table)
        out["instances"] = n
        out["segment"] = attrs.get("segment")
    return out


def _render_volume(s: dict) -> list[str]:
    what = "label volume" if s["kind"] == "labels" else "image"
    lines = [
        f"{what} {s['path']} ({s['format']}, {_size(s['bytes'])} on disk)",
        f"  shape {_xyz(s['shape'])} {s['dtype']}, chunks {_xyz(s['chunks'])}"
        + (f" (shards {_xyz(s['write_unit'])})" if s["write_unit"] != s["chunks"] else ""),
        f"  voxel size {_xyz(s['voxel_size'])} µm (from {s['voxel_size_source']})"
        + ("; read " + ", ".join(f"{k} {v}" for k, v in s["selection"].items()) if s["selection"] else ""),
    ]
    if len(s["levels"]) > 1:
        lines.append("  pyramid: " + ", ".join(f"{i}: {_xyz(shape)}" for i, shape in enumerate(s["levels"])))
    if s["kind"] == "labels":
        lines.append(f"  instances: {s['instances'] if s.get('instances') is not None else 'not recorded (no instance table)'}")
        seg = s.get("segment")
        if seg:
            params = _params(seg.get("params", {}), seg.get("params_source"))
            lines.append(f"  segmented with decoder {seg.get('decoder')}: {params}")
    lines.append(f"  {s['grid']['repr']}")
    return lines


# ---------------------------------------------------------------------------- run directory
def run_summary(path: str) -> dict:

    record = os.path.join(path, "run.json")
    try:
        with open(record, "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
    except ValueError as e:  # not UTF-8, not JSON
        raise BlocksegError(f"{record}: the run record does not parse ({type(e).__name__}: {str(e).splitlines()[0][:120]}); it is damaged") from None
    if not isinstance(marker, dict):
        raise BlocksegError(f"{record}: the run record is JSON but not an object; it is damaged")
    stages = {}
    for stage in STAGES:
        rec_path = os.path.join(path, "stages", f"{stage}.json")
        rec = None
        if os.path.isfile(rec_path):
            try:
                with open(rec_path) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                rec = {"status": "damaged record"}
        stages[stage] = {
            "status": (rec or {}).get("status", "not started"),
            "seconds": (rec or {}).get("seconds"),
            "finished": (rec or {}).get("finished"),
        }
    plan_actions = None
    try:  # whether each stage is current for the config the run holds
        plan_actions = plan(parse_config(marker.get("config") or {}, "run.json"))
    except Exception:
        plan_actions = None
    ev = None
    rec = os.path.join(path, "stages", "evaluate.json")
    if stages["evaluate"]["status"] == "done":
        with open(rec) as f:
            res = json.load(f).get("result") or {}
        ev = {k: res.get(k) for k in ("avAP", "AP50", "AP75", "n_true", "n_pred")}
    seg_rec = os.path.join(path, "stages", "segment.json")
    decoder = None
    if stages["segment"]["status"] == "done":
        with open(seg_rec) as f:
            decoder = (json.load(f).get("result") or {}).get("decoder")
    cfg = marker.get("config") or {}
    return {
        "kind": "run",
        "path": path,
        "name": cfg.get("name"),
        "blockseg_version": marker.get("blockseg_version"),
        "checkpoint": (cfg.get("model") or {}).get("checkpoint"),
        "stages": stages,
        "plan": plan_actions,
        "decoder": decoder,
        "evaluation": ev,
        "bytes": _disk_bytes(path),
    }


def _render_run(s: dict) -> list[str]:
    lines = [f"run directory {s['path']} (name {s.get('name')}, blockseg {s.get('blockseg_version')}, {_size(s['bytes'])})",
             f"  checkpoint: {s.get('checkpoint')}"]  # fmt: skip
    words = {"skip": "up to date", "run": "to run", "resume": "to resume", "disabled": "disabled"}
    for stage, st in s["stages"].items():
        extra = f", {st['seconds']:.1f} s" if st.get("seconds") is not None else ""
        when = f", finished {st['finished']}" if st.get("finished") else ""
        nxt = f"; next run: {words.get(s['plan'][stage], s['plan'][stage])}" if s.get("plan") else ""
        lines.append(f"  {stage:<9} {st['status']}{extra}{when}{nxt}")
    d = s.get("decoder")
    if d and d.get("params"):
        lines.append(f"  decoder {d.get('name')}: " + _params(d["params"], d.get("sources")))
    ev = s.get("evaluation")
    if ev:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"  evaluation: avAP {fmt(ev.get('avAP'))}, AP-50 {fmt(ev.get('AP50'))}, AP-75 {fmt(ev.get('AP75'))}, "
                     f"{ev.get('n_true')} GT / {ev.get('n_pred')} predicted")  # fmt: skip
    return lines


# ---------------------------------------------------------------------------- entry points
def summarise(path: str, key: str | None = None, block=None, halo=0) -> dict:
    """Summary of what ``path`` holds (see the module docstring); plain, JSON-ready data."""
    kind = kind_of(path)
    if kind == "checkpoint":
        return checkpoint_summary(path)
    if kind == "run":
        return run_summary(path)
    if kind == "predictions":
        return predictions_summary(path)
    return volume_summary(path, key, block, halo)


def render(summary: dict) -> str:
    """A summary as a few lines of text."""
    kind = summary["kind"]
    lines = {
        "checkpoint": _render_checkpoint,
        "model": _render_model,
        "run": _render_run,
        "predictions": _render_predictions,
    }.get(kind, _render_volume)(summary)
    return "\n".join(lines)
