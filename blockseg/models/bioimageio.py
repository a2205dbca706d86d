"""bioimage.io model packages (format 0.5): run one as a foreign network, write one from a checkpoint.

Reading (``blockseg predict IMAGE PACKAGE OUT``, ``blockseg info PACKAGE``): a folder with an
``rdf.yaml`` / ``bioimageio.yaml``, that file itself, or a ``.zip`` package (unpacked once per
machine into a cache folder keyed by its digest). The description is loaded and validated with
``bioimageio.spec`` (``pip install 'blockseg[bioimageio]'``); from it come the weights
(TorchScript, else ONNX; a ``pytorch_state_dict`` needs the package's Python code, which blockseg
does not run), the axes (one single-channel 3-D input ``b c z y x``), the patch (the test
input's shape), the divisor (the input size step), the halo, a valid-padding crop (an output
size offset), the preprocessing (``scale_range`` -> percentile normalisation, ``scale_linear`` /
fixed ``zero_mean_unit_variance`` -> a fixed map), the postprocessing (``sigmoid`` -> the
channels' logits get their activation from blockseg; none -> the outputs are final), the output
channel names (blockseg's names or aliases, see :mod:`.foreign`) and the voxel size (the input's
space axes' ``scale`` and ``unit``). The margin is measured (``margin: auto``). A package that
blockseg exported carries the exact sidecar in ``config.blockseg``, which then takes priority; a
sidecar beside the package (``model.zip`` + ``model.yaml``) overrides or adds any key.

Note: ``scale_range`` percentiles are per tile in bioimage.io, per volume in blockseg.

Writing (``blockseg export-model CHECKPOINT OUT.zip``): :func:`blockseg.models.bioimageio_export.export_package`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile

import numpy as np

from ..errors import BlocksegError
from .sidecar import find_sidecar, read_sidecar
from ..io.storage import has_scheme

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: units of space axes -> micrometres
UNITS = {"micrometer": 1.0, "micron": 1.0, "nanometer": 1e-3, "millimeter": 1e3}
#: blockseg activations bioimage.io's sigmoid postprocessing stands for
SIGMOID_REPS = ("B", "C", "aff", "gauss")


def require_spec():
    """The ``bioimageio.spec`` package, or a one-line error naming the extra that installs it."""
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise BlocksegError("bioimage.io packages need bioimageio.spec: pip install 'blockseg[bioimageio]'") from None
    return spec


def is_package(path) -> bool:
    """Whether ``path`` is a bioimage.io model package: a folder with an rdf, the rdf, or a zip holding one."""
    p = str(path)
    if has_scheme(p):
        return False
    if os.path.isdir(p):
        return any(os.path.isfile(os.path.join(p, n)) for n in RDF_NAMES)
    base = os.path.basename(p).lower()
    if os.path.isfile(p) and (base in RDF_NAMES or base.endswith(".bioimageio.yaml")):
        return True
    if os.path.isfile(p) and p.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(p) as z:
                return any(n in RDF_NAMES or n.endswith(".bioimageio.yaml") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _rdf_in(folder: str) -> str:
    for n in RDF_NAMES:
        if os.path.isfile(os.path.join(folder, n)):
            return os.path.join(folder, n)
    found = [n for n in os.listdir(folder) if n.endswith(".bioimageio.yaml")]
    if not found:
        raise BlocksegError(f"{folder}: no rdf.yaml / bioimageio.yaml in it")
    return os.path.join(folder, found[0])


def unpack(path) -> str:
    """The rdf of a package: a zip is unpacked once per machine (cache folder keyed by its digest)."""
    p = os.path.abspath(str(path))
    if os.path.isdir(p):
        return _rdf_in(p)
    if not p.lower().endswith(".zip"):
        return p
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    root = os.path.join(tempfile.gettempdir(), "blockseg-bioimageio")
    dest = os.path.join(root, h.hexdigest()[:20])
    if not os.path.isdir(dest):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root, prefix=".unpack-")
        try:
            with zipfile.ZipFile(p) as z:
                for name in z.namelist():  # nothing may land outside the folder
                    target = os.path.realpath(os.path.join(tmp, name))
                    if not target.startswith(os.path.realpath(tmp) + os.sep):
                        raise BlocksegError(f"{path}: the package holds a path outside itself ({name!r})")
                z.extractall(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process unpacked it first
                shutil.rmtree(tmp, ignore_errors=True)
        except zipfile.BadZipFile:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BlocksegError(f"{path}: not a readable zip file") from None
    return _rdf_in(dest)


def _load(rdf: str):
    spec = require_spec()
    from bioimageio.spec.model import v0_5

    try:
        descr = spec.load_model_description(rdf, format_version="latest", perform_io_checks=False)
    except Exception as e:  # a malformed file: pydantic, yaml or io errors
        raise BlocksegError(f"{rdf}: not a valid bioimage.io model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(descr, v0_5.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        first = ""
        if summary is not None:
            errs = [d for d in summary.details if d.errors]
            if errs:
                e = errs[0].errors[0]
                first = f": {'.'.join(map(str, e.loc))}: {e.msg}"
        raise BlocksegError(f"{rdf}: not a valid bioimage.io model description (format 0.5){first}")
    return descr


def package_spec(path) -> tuple[str, str, dict, dict]:
    """``(weights, rdf, sidecar spec, origins)`` of a package: what :func:`.foreign.describe` reads.

    ``origins`` maps each key to ``"package"`` or ``"sidecar"`` (a sidecar beside the package).
    """
    rdf = unpack(path)
    descr = _load(rdf)
    folder = os.path.dirname(rdf)
    where = str(path)
    w = descr.weights
    if w.torchscript is not None:
        fmt, source = "torchscript", w.torchscript.source
    elif w.onnx is not None:
        fmt, source = "onnx", w.onnx.source
    else:
        have = [k for k in ("pytorch_state_dict", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle", "tensorflow_js")
                if getattr(w, k, None) is not None]  # fmt: skip
        raise BlocksegError(f"{where}: blockseg runs torchscript or onnx weights; the package has {have} "
                            "(a pytorch_state_dict needs the package's Python code, which blockseg does not run)")  # fmt: skip
    weights = os.path.join(folder, str(source))
    if not os.path.isfile(weights):
        raise BlocksegError(f"{where}: its {fmt} weights {source} are missing")
    cfg = descr.config.model_extra.get("blockseg") if descr.config.model_extra else None
    if cfg:  # exported by blockseg: the exact sidecar
        spec = dict(cfg)
    else:
        spec = _derive(descr, folder, where)
    spec["format"] = fmt
    spec.setdefault("name", str(descr.name))
    origins = {k: "package" for k in spec}
    if os.path.isfile(str(path)) and not os.path.basename(str(path)).lower() in RDF_NAMES:
        side = find_sidecar(os.path.abspath(str(path)))
        if side and os.path.abspath(side) != os.path.abspath(str(path)):
            extra = read_sidecar(side)
            spec.update(extra)
            origins.update({k: "sidecar" for k in extra})
    return weights, rdf, spec, origins


def _axes(tensor) -> list[str]:
    return [str(a.id) if getattr(a, "type", "") in ("space", "time") else str(a.type) for a in tensor.axes]


def _derive(descr, folder: str, where: str) -> dict:
    """A sidecar from a package's own description (see the module docstring)."""
    if len(descr.inputs) != 1 or len(descr.outputs) < 1:
        raise BlocksegError(f"{where}: blockseg runs models with one input tensor, this one has {len(descr.inputs)}")
    inp, out = descr.inputs[0], descr.outputs[0]
    if _axes(inp) != ["batch", "channel", "z", "y", "x"] and _axes(inp) != ["batch", "z", "y", "x"]:
        raise BlocksegError(f"{where}: blockseg runs 3-D single-channel models (input axes b c z y x); this one has {_axes(inp)}")
    chan = [a for a in inp.axes if a.type == "channel"]
    if chan and len(chan[0].channel_names) != 1:
        raise BlocksegError(f"{where}: the input has {len(chan[0].channel_names)} channels; blockseg feeds one")
    if _axes(out) != ["batch", "channel", "z", "y", "x"]:
        raise BlocksegError(f"{where}: blockseg reads outputs with axes b c z y x; this one has {_axes(out)}")
    names = [str(n) for n in [a for a in out.axes if a.type == "channel"][0].channel_names]
    spec: dict = {"outputs": names, **_geometry(inp, out, folder, where), "margin": "auto"}
    scales = [float(a.scale) * UNITS[str(a.unit)] for a in inp.axes
              if a.type == "space" and a.unit is not None and str(a.unit) in UNITS and a.scale]  # fmt: skip
    if len(scales) == 3:  # voxel size from the input's space axes
        spec["voxel_size"] = scales
    spec["normalisation"] = _normalisation(inp.preprocessing, where)
    post = [p for p in out.postprocessing if p.id != "ensure_dtype"]
    if not post:
        spec["activation"] = "applied"
    elif len(post) == 1 and post[0].id == "sigmoid":
        spec["activation"] = "logits"  # the sigmoid is ours to apply: only to channels it stands for
        spec["_sigmoid"] = True
    else:
        raise BlocksegError(f"{where}: output postprocessing {[p.id for p in post]} is not something blockseg applies "
                            "(sigmoid or none); add 'activation:' to a sidecar beside the package")  # fmt: skip
    return spec


def _geometry(inp, out, folder: str, where: str) -> dict:
    """The sidecar's patch, crop, halo and divisor from the tensors' space axes."""
    # patch: the test input's shape (a size the package says it runs), divisor: the size step
    test = np.load(os.path.join(folder, str(inp.test_tensor.source)), mmap_mode="r") if inp.test_tensor else None
    sizes, steps = [], []
    for k, a in enumerate(a for a in inp.axes if a.type == "space"):
        s = a.size
        if isinstance(s, int):
            sizes.append(s)
            steps.append(0)
        elif hasattr(s, "min"):
            sizes.append(int(test.shape[-3 + k]) if test is not None else int(s.min))
            steps.append(int(s.step))
        else:
            raise BlocksegError(f"{where}: input axis {a.id} has a size blockseg cannot read ({s!r})")
    crop, halo = [], []
    for a in (a for a in out.axes if a.type == "space"):
        halo.append(int(getattr(a, "halo", 0) or 0))
        off = int(getattr(a.size, "offset", 0) or 0) if hasattr(a.size, "tensor_id") else 0
        crop.append(max(-off, 0) // 2)
    if all(steps):
        divisor = steps
    elif any(steps):
        raise BlocksegError(f"{where}: some input axes have a fixed size and others not; blockseg needs all or none fixed")
    else:
        divisor = [p - 2 * c - 2 * h for p, c, h in zip(sizes, crop, halo)]  # only this size runs
    return {"patch": sizes, "crop": crop, "halo": halo, "divisor": divisor}


def _normalisation(pre, where: str):
    steps = [p for p in pre if p.id != "ensure_dtype"]
    if not steps:
        return None
    if len(steps) > 1:
        raise BlocksegError(f"{where}: preprocessing {[p.id for p in steps]}: blockseg applies one normalisation; "
                            "add 'normalisation:' to a sidecar beside the package")  # fmt: skip
    p = steps[0]
    k = p.kwargs
    if p.id == "scale_range":
        return {"percentile": [float(k.min_percentile), float(k.max_percentile)]}
    if p.id == "scale_linear":
        gain, offset = float(np.mean(k.gain)), float(np.mean(k.offset))
        return {"offset": -offset / gain, "scale": 1.0 / gain}
    if p.id in ("fixed_zero_mean_unit_variance",) or (p.id == "zero_mean_unit_variance" and getattr(k, "mean", None) is not None):
        return {"mean": float(np.mean(k.mean)), "std": float(np.mean(k.std))}
    raise BlocksegError(f"{where}: preprocessing {p.id!r} depends on each tile's statistics (or is not a scaling); blockseg "
                        "normalises every block with one map: add 'normalisation:' to a sidecar beside the package")  # fmt: skip
