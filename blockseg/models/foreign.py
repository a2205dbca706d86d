"""Networks blockseg did not build: TorchScript and ONNX files described by a small sidecar.

Any network that maps a normalised float32 batch ``(N, 1, z, y, x)`` to ``(N, K, z', y', x')``
runs through the same engine as blockseg's own checkpoints (lattice, blending, resume,
resampling, quantisation, store layout) once a *sidecar* says what the engine needs to know:
a YAML or JSON file beside the network with the same stem (``net.pt`` + ``net.yaml``,
``net.onnx`` + ``net.json``), giving at least ``outputs`` (the channels, by blockseg's names
or aliases), ``patch``, ``margin`` (or ``auto``: measured by probing the receptive field) and
``normalisation``; optionally ``activation``, ``voxel_size``, ``decoder``, ``crop``, ``halo``,
``divisor``, ``nucleus_diameter_um``, ``weights``, ``format``, ``name``.

Safety: a TorchScript file is a program; it is opened with ``torch.jit.load`` (never
``torch.load(weights_only=False)``), but only open models from sources you trust. An ONNX
file is a data-only graph run by onnxruntime (``pip install blockseg[onnx]``).

Every key, the channel aliases and how ``margin: auto`` is measured: ``docs/api/models.md``,
section *Networks blockseg did not build: the sidecar*.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import BlocksegError
from ..io.storage import has_scheme
from ..zyx import zyx
from .base import REPRESENTATIONS, BlocksegNet, Geometry, register_architecture
from .sidecar import SIDECAR_SUFFIXES, find_sidecar, read_sidecar
from .bioimageio import is_package, package_spec

FORMATS = ("torchscript", "onnx")
#: extra names accepted for single channels
ALIASES = {"foreground": "B", "contour": "C", "distance": "D", "background": "P_bg", "interior": "P_interior"}
IGNORE = ("ignore", "-", "none")
#: channel name -> representation
CHANNEL_REPRESENTATION = {c: r for r, (chs, _) in REPRESENTATIONS.items() for c in chs}
#: relative change of an output that counts as a response in the receptive-field probe
PROBE_TOLERANCE = 1e-6
#: hint added to every refusal: where the sidecar goes
_WHERE = "the sidecar (YAML/JSON with the network's stem)"


# ---------------------------------------------------------------------------- recognising files
def _is_torchscript_zip(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl`` / ``code/``),
    as opposed to a ``torch.save`` checkpoint (a zip with ``data.pkl`` only)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names)


def is_foreign(path) -> bool:
    """Whether ``path`` names a TorchScript or ONNX network (or its sidecar), not a blockseg checkpoint."""
    p = str(path)
    if has_scheme(p):
        return False

    if is_package(p):  # a bioimage.io model package (blockseg.models.bioimageio)
        return True
    if not os.path.isfile(p):
        return False
    low = p.lower()
    if low.endswith(".onnx") or low.endswith(SIDECAR_SUFFIXES):
        return True
    return _is_torchscript_zip(p)


def _find_weights(sidecar: str, spec: dict) -> str:
    base = os.path.dirname(os.path.abspath(sidecar))
    if spec.get("weights"):
        w = os.path.join(base, str(spec["weights"]))
        if not os.path.isfile(w):
            raise BlocksegError(f"{sidecar}: weights {spec['weights']!r} not found (looked for {w})")
        return w
    stem = os.path.splitext(os.path.abspath(sidecar))[0]
    for s in (".pt", ".pth", ".ts", ".jit", ".torchscript", ".onnx"):
        if os.path.isfile(stem + s):
            return stem + s
    raise BlocksegError(f"{sidecar}: no network beside it ({os.path.basename(stem)}.pt / .onnx); add 'weights: FILE' to it")


def _digest(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- the description
@dataclass
class ForeignModel:
    """What the engine uses of a foreign network, and where each item came from.

    Attributes
    ----------
    weights, sidecar : str
        The network file and its sidecar (absolute paths).
    format : {"torchscript", "onnx"}
    outputs : tuple of str
        Meaning of each output channel in the network's order (``""``: ignored).
    representations : tuple of str
        blockseg representations these channels form, in the order the engine stores them.
    index : tuple of int
        Network output channel of each stored channel (``channels_of(representations)`` order).
    activation : dict
        ``{representation: "logits" | "applied"}``.
    input_patch, margin, crop, halo, divisor : tuple of int
        Geometry; ``crop`` includes ``halo`` (the engine discards both).
    normalisation : dict or None
        blockseg's normalisation metadata (:mod:`blockseg.predict.normalise`).
    voxel_size : tuple of float or None
    decoder : dict or None
    sources : dict
        ``{item: "sidecar" | "measured" | "default" | "model"}``.
    notes : dict
        One line per item where something was measured or defaulted.
    """

    weights: str
    sidecar: str
    format: str
    outputs: tuple
    representations: tuple
    index: tuple
    activation: dict
    input_patch: tuple
    margin: tuple | None
    crop: tuple
    halo: tuple
    divisor: tuple
    normalisation: dict | None
    voxel_size: tuple | None
    decoder: dict | None
    nucleus_diameter_um: float | None
    name: str
    digest: str
    sources: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    fixed_patch: bool = False
    #: the path the model was given as when it is a bioimage.io package (else "")
    package: str = ""

    @property
    def geometry(self) -> Geometry:
        if self.margin is None:
            raise BlocksegError(f"{self.sidecar}: margin not measured yet")
        return Geometry(self.input_patch, self.crop, self.margin, self.divisor)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "weights": self.weights,
            "sidecar": self.sidecar,
            "name": self.name,
            "sha256": self.digest,
            "outputs": [o or "ignore" for o in self.outputs],
            "representations": list(self.representations),
            "activation": dict(self.activation),
            "patch": list(self.input_patch),
            "margin": None if self.margin is None else list(self.margin),
            "crop": list(self.crop),
            "halo": list(self.halo),
            "divisor": list(self.divisor),
            "normalisation": self.normalisation,
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "decoder": self.decoder,
            "fixed_patch": self.fixed_patch,
            **({"package": self.package} if self.package else {}),
            "sources": dict(self.sources),
            "notes": dict(self.notes),
        }

    def payload(self) -> dict:
        """A checkpoint-like payload (what :func:`blockseg.models.read_checkpoint` returns)."""
        meta = {"normalisation": self.normalisation}
        if self.voxel_size is not None:
            meta["voxel_size"] = list(self.voxel_size)
        if self.decoder is not None:
            meta["decoder"] = self.decoder
        if self.nucleus_diameter_um is not None:
            meta["nucleus_diameter_um"] = self.nucleus_diameter_um
        return {
            "magic": "foreign",
            "format": self.format,
            "architecture": ForeignNet.architecture,
            "config": {"path": self.package} if self.package else {"path": self.weights, "sidecar": self.sidecar},
            "representations": list(self.representations),
            "geometry": self.geometry.to_dict(),
            "metadata": meta,
            "foreign": self.to_dict(),
        }

    def summary_line(self) -> str:
        """One line for the predict plan."""
        m = self.notes.get("margin", "")
        return (f"{self.format} {self.weights} with sidecar {os.path.basename(self.sidecar)}: outputs "
                f"{', '.join(o or 'ignore' for o in self.outputs)} ({', '.join(f'{r} {a}' for r, a in self.activation.items())}); "
                f"margin {_xyz(self.margin)} [{self.sources.get('margin')}{': ' + m if m else ''}]")  # fmt: skip


def _xyz(v) -> str:
    return "x".join(str(int(a)) for a in v) if v is not None else "?"


def _triple(spec: dict, key: str, where: str, minimum: int = 0) -> tuple[int, int, int] | None:
    """A sidecar value of one integer or three (z y x); None when absent."""
    return zyx(spec.get(key), f"{where}: {key}", at_least=minimum)  # type: ignore[return-value]


def parse_outputs(outputs, where: str) -> tuple[tuple, tuple, tuple]:
    """``(outputs, representations, index)`` of a sidecar's ``outputs`` list (see the module docstring)."""
    if not isinstance(outputs, list) or not outputs:
        raise BlocksegError(f"{where}: add 'outputs: [...]' naming what each output channel is, e.g. [B, C, D] or "
                            f"[foreground, contour], from {sorted(CHANNEL_REPRESENTATION) + sorted(ALIASES)}")  # fmt: skip
    named: list[str] = []
    for o in outputs:
        o = "none" if o is None else str(o).strip()
        if o in REPRESENTATIONS and len(REPRESENTATIONS[o][0]) > 1:  # cpv, 3label, aff: every channel
            named.extend(REPRESENTATIONS[o][0])
        elif o in REPRESENTATIONS or o in CHANNEL_REPRESENTATION:
            named.append(o)
        elif o in ALIASES:
            named.append(ALIASES[o])
        elif o.lower() in IGNORE:
            named.append("")
        else:
            raise BlocksegError(f"{where}: output {o!r} is not a channel blockseg knows; use one of "
                                f"{sorted(CHANNEL_REPRESENTATION)}, {sorted(ALIASES)} or 'ignore'")  # fmt: skip
    kept = [c for c in named if c]
    dup = sorted({c for c in kept if kept.count(c) > 1})
    if dup:
        raise BlocksegError(f"{where}: outputs name {dup} more than once")
    if not kept:
        raise BlocksegError(f"{where}: every output is 'ignore': nothing to predict")
    reps: list[str] = []
    for c in kept:
        r = CHANNEL_REPRESENTATION[c]
        if r not in reps:
            reps.append(r)
    for r in reps:
        missing = [c for c in REPRESENTATIONS[r][0] if c not in kept]
        if missing:
            raise BlocksegError(f"{where}: outputs name part of {r} ({[c for c in REPRESENTATIONS[r][0] if c in kept]}) "
                                f"but not {missing}: name all of its channels, or mark them 'ignore'")  # fmt: skip
    index = tuple(named.index(c) for r in reps for c in REPRESENTATIONS[r][0])
    return tuple(named), tuple(reps), index


def parse_activation(value, reps: Sequence[str], where: str) -> tuple[dict, str]:
    """``({representation: "logits" | "applied"}, source)``."""
    choices = ("logits", "applied")
    if value is None:
        return {r: "logits" for r in reps}, "default"
    if isinstance(value, str):
        if value not in choices:
            raise BlocksegError(f"{where}: activation is 'logits' (blockseg applies sigmoid/tanh/softmax) or 'applied', got {value!r}")
        return {r: value for r in reps}, "sidecar"
    if isinstance(value, dict):
        out = {r: "logits" for r in reps}
        for k, v in value.items():
            r = CHANNEL_REPRESENTATION.get(ALIASES.get(k, k), k)
            if r not in out or v not in choices:
                raise BlocksegError(f"{where}: activation maps representations {list(reps)} to 'logits' or 'applied', got {k}: {v!r}")
            out[r] = v
        return out, "sidecar"
    raise BlocksegError(f"{where}: activation is 'logits', 'applied' or a mapping per representation, got {value!r}")


def parse_normalisation(spec: dict, where: str) -> dict | None:
    """blockseg's normalisation metadata from a sidecar's ``normalisation`` (required; ``none`` allowed)."""
    if "normalisation" not in spec and "normalization" not in spec:
        raise BlocksegError(f"{where}: add 'normalisation:' saying how raw intensities become the network input: "
                            "none, {percentile: [1, 99.8]} (each volume's percentiles -> 0 and 1), or {offset: M, scale: S}")  # fmt: skip
    n = spec.get("normalisation", spec.get("normalization"))
    bad = BlocksegError(f"{where}: normalisation is none, {{percentile: [LOW, HIGH]}}, {{scale_range: {{min_percentile, "
                        f"max_percentile}}}}, {{offset: M, scale: S}} or {{mean: M, std: S}}, got {n!r}")  # fmt: skip
    if n is None or (isinstance(n, str) and n.lower() == "none"):
        return None
    if not isinstance(n, dict):
        raise bad
    try:
        if "percentile" in n:
            low, high = (float(v) for v in n["percentile"])
        elif "scale_range" in n:
            sr = n["scale_range"] or {}
            low, high = float(sr.get("min_percentile", 0.0)), float(sr.get("max_percentile", 100.0))
        elif n.get("scheme") == "percentile":
            low, high = float(n.get("low", 1.0)), float(n.get("high", 99.8))
        elif "offset" in n or "scale" in n:
            out = {"offset": float(n.get("offset", 0.0)), "scale": float(n.get("scale", 1.0)), "method": "sidecar"}
            if not out["scale"] > 0:
                raise bad
            return out
        elif "mean" in n and "std" in n:
            if not float(n["std"]) > 0:
                raise bad
            return {"offset": float(n["mean"]), "scale": float(n["std"]), "method": "mean_std (sidecar)"}
        else:
            raise bad
    except (TypeError, ValueError):
        raise bad from None
    if not 0 <= low < high <= 100:
        raise BlocksegError(f"{where}: normalisation percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    return {"scheme": "percentile", "low": low, "high": high}


# ---------------------------------------------------------------------------- running them
class _OnnxRunner:
    """An onnxruntime session as a callable on torch tensors (CPU, or CUDA where the provider is)."""

    def __init__(self, path: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BlocksegError(f"{path}: ONNX models need onnxruntime: pip install 'blockseg[onnx]'") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # one thread per session unless torch asks for more: dask workers run one task per thread
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as e:
            raise BlocksegError(f"{path}: onnxruntime cannot open it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BlocksegError(f"{path}: the ONNX graph has {len(inputs)} inputs; blockseg feeds one image (N, 1, z, y, x)")
        self.input = inputs[0].name
        self.shape = list(inputs[0].shape)
        if len(self.shape) != 5:
            raise BlocksegError(f"{path}: the ONNX input has shape {self.shape}; blockseg feeds (N, 1, z, y, x)")
        if isinstance(self.shape[1], int) and self.shape[1] != 1:
            raise BlocksegError(f"{path}: the ONNX input has {self.shape[1]} channels; blockseg feeds one (a single-channel image)")
        self.batch = self.shape[0] if isinstance(self.shape[0], int) and self.shape[0] > 0 else None
        spatial = self.shape[2:]
        self.fixed = tuple(spatial) if all(isinstance(s, int) and s > 0 for s in spatial) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().float().cpu().numpy()
        if self.batch is None or self.batch == a.shape[0]:
            y = self.session.run(None, {self.input: a})[0]
        else:  # a fixed batch: run it that many at a time (a short last batch is padded)
            parts = []
            for i in range(0, a.shape[0], self.batch):
                chunk = a[i : i + self.batch]
                n = chunk.shape[0]
                if n < self.batch:
                    chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self.session.run(None, {self.input: chunk})[0][:n])
            y = np.concatenate(parts)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)

    def activations_per_voxel(self, path: str) -> int | None:
        """Sum of the output channels of the graph's Conv layers (needs the onnx package), else None."""
        try:
            import onnx
        except ImportError:
            return None
        try:
            g = onnx.load(path, load_external_data=False).graph
            dims = {i.name: list(i.dims) for i in g.initializer}
            total = 0
            for node in g.node:
                if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in dims:
                    d = dims[node.input[1]]
                    total += int(d[0] if node.op_type == "Conv" else d[1]) if d else 0
            return total or None
        except Exception:
            return None


_LOADED: dict[tuple, object] = {}
_LOADED_LOCK = threading.Lock()


def _load_network(weights: str, fmt: str):
    """The TorchScript module (CPU, eval) or ONNX runner of a file, once per process and mtime."""
    key = (weights, os.path.getmtime(weights), fmt)
    with _LOADED_LOCK:
        net = _LOADED.get(key)
        if net is None:
            if fmt == "onnx":
                net = _OnnxRunner(weights)
            else:
                try:  # TorchScript is a program: torch.jit.load, never torch.load(weights_only=False)
                    net = _jit_load(weights, "cpu")
                except Exception as e:
                    raise BlocksegError(f"{weights}: not a TorchScript file torch {torch.__version__} can load "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None  # fmt: skip
            _LOADED[key] = net
    return net


def _jit_load(path: str, device) -> torch.jit.ScriptModule:
    """``torch.jit.load`` in eval mode (its deprecation notice in favour of torch.export is not the user's concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        return torch.jit.load(path, map_location=device).eval()


def _run_raw(net, x: torch.Tensor) -> torch.Tensor:
    """All output channels of the network (first output if it returns several)."""
    y = net(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if isinstance(y, dict):
        y = next(iter(y.values()))
    if not isinstance(y, torch.Tensor) or y.ndim != 5:
        raise BlocksegError(f"the network returned {type(y).__name__} {getattr(y, 'shape', '')}; expected one (N, K, z, y, x) tensor")
    return y


# ---------------------------------------------------------------------------- describing a model
_DESCRIBED: dict[tuple, ForeignModel] = {}


def describe(path, sidecar: str | None = None) -> ForeignModel:
    """Read a foreign model (weights or sidecar path), check it with one forward pass and measure
    its margin when the sidecar says ``auto``. Cached per process and file modification times.

    ``sidecar``: the sidecar of weights ``path``, when it is not found by the weights' stem.
    """
    p = os.path.abspath(str(path))

    if sidecar is None and is_package(p):
        return _describe_package(p)
    if not os.path.isfile(p):
        raise BlocksegError(f"model {path} does not exist")
    if sidecar is not None:
        weights, sidecar = p, os.path.abspath(str(sidecar))
    elif p.lower().endswith(SIDECAR_SUFFIXES):
        sidecar = p
        weights = _find_weights(sidecar, read_sidecar(sidecar))
    else:
        weights, sidecar = p, find_sidecar(p)
        if sidecar is None:
            stem = os.path.splitext(os.path.basename(p))[0]
            raise BlocksegError(f"{path}: a {('ONNX' if p.lower().endswith('.onnx') else 'TorchScript')} network needs a sidecar "
                                f"{stem}.yaml beside it naming its outputs, patch, margin and normalisation "
                                "(see blockseg.models.foreign, docs/guide/models.md, 'Use your own model')")  # fmt: skip
    key = (weights, sidecar, os.path.getmtime(weights), os.path.getmtime(sidecar))
    if key in _DESCRIBED:
        return _DESCRIBED[key]
    desc = _describe(weights, sidecar)
    _DESCRIBED[key] = desc
    return desc


def _describe_package(p: str) -> ForeignModel:
    """:func:`describe` of a bioimage.io package (cached per process and modification times)."""

    rdf_or_self = p if os.path.isfile(p) else next((os.path.join(p, n) for n in ("rdf.yaml", "bioimageio.yaml")
                                                    if os.path.isfile(os.path.join(p, n))), p)  # fmt: skip
    side = find_sidecar(p) if os.path.isfile(p) and not p.lower().endswith(SIDECAR_SUFFIXES) else None
    key = ("package", p, os.path.getmtime(rdf_or_self), os.path.getmtime(side) if side else None)
    if key in _DESCRIBED:
        return _DESCRIBED[key]
    weights, rdf, spec, origins = package_spec(p)
    desc = _describe(weights, rdf, spec, origins, package=p, extra=[side] if side else [])
    _DESCRIBED[key] = desc
    return desc


def _describe(weights: str, sidecar: str, spec: dict | None = None, origins: dict | None = None, package: str = "",
              extra: Sequence[str] = ()) -> ForeignModel:  # fmt: skip
    """A :class:`ForeignModel` from its weights and sidecar (or a package's derived ``spec``,
    whose items came from ``origins[key]``: "package" or "sidecar")."""
    spec = read_sidecar(sidecar) if spec is None else dict(spec)
    where = package or sidecar
    sources, notes = {}, {}
    sigmoid_only = spec.pop("_sigmoid", False)  # a package's sigmoid postprocessing

    def origin(key: str) -> str:
        return (origins or {}).get(key, "sidecar")

    fmt = _weights_format(weights, spec, where)
    outputs, reps, index, activation = _outputs(spec, where, package, origin, origins, sigmoid_only, sources, notes)
    normalisation = parse_normalisation(spec, where)
    sources["normalisation"] = origin("normalisation")
    if package and normalisation and normalisation.get("scheme") == "percentile" and origin("normalisation") == "package":
        notes["normalisation"] = "the package's scale_range, taken over the whole volume (bioimage.io: per tile)"
    net = _load_network(weights, fmt)
    fixed = net.fixed if fmt == "onnx" else None
    patch, crop, halo, divisor = _patch_geometry(spec, where, fixed, origin, sources, notes)
    voxel_size = _voxel_size(spec, where, origin, sources, notes)
    decoder = _decoder(spec, where, origin, sources)
    # one forward on the patch: the output's channels and size must be what the sidecar says
    raw = _probe_forward(net, torch.zeros((1, 1, *patch)), where)
    want = tuple(p - 2 * c for p, c in zip(patch, crop))
    if raw.shape[1] != len(outputs) or tuple(raw.shape[2:]) != want:
        raise BlocksegError(f"{where}: on a patch {list(patch)} the network returns {raw.shape[1]} channels of {list(raw.shape[2:])}; "
                            f"the sidecar says {len(outputs)} outputs of {list(want)} (patch - 2 * crop)")  # fmt: skip
    margin = _margin(spec, net, patch, crop, halo, divisor, where, origin, sources, notes)
    diameter = spec.get("nucleus_diameter_um")
    desc = ForeignModel(
        weights=weights, sidecar=sidecar, format=fmt, outputs=outputs, representations=reps, index=index,
        activation=activation, input_patch=tuple(patch), margin=tuple(margin), crop=tuple(c + h for c, h in zip(crop, halo)),
        halo=tuple(halo), divisor=tuple(divisor), normalisation=normalisation, voxel_size=voxel_size, decoder=decoder,
        nucleus_diameter_um=None if diameter is None else float(diameter), name=str(spec.get("name") or os.path.basename(weights)),
        digest=_digest(weights, sidecar, *extra), sources=sources, notes=notes, fixed_patch=bool(fixed), package=package,
    )  # fmt: skip
    desc.geometry  # validates
    return desc


def _weights_format(weights: str, spec: dict, where: str) -> str:
    """The network's format (the sidecar's ``format``, else by the file's suffix), checked."""
    fmt = spec.get("format") or ("onnx" if weights.lower().endswith(".onnx") else "torchscript")
    if fmt not in FORMATS:
        raise BlocksegError(f"{where}: format is one of {FORMATS}, got {fmt!r}")
    if fmt == "torchscript" and not _is_torchscript_zip(weights):
        raise BlocksegError(f"{weights}: not a TorchScript archive (torch.jit.save / torch.jit.trace(...).save); "
                            "for a plain state dict, rebuild the network in Python and export it with torch.jit.script or trace")  # fmt: skip
    return fmt


def _outputs(spec: dict, where: str, package: str, origin, origins, sigmoid_only: bool, sources: dict, notes: dict):
    """``(outputs, representations, index, activation)`` of the sidecar (or package), their
    sources and notes recorded."""
    try:
        outputs, reps, index = parse_outputs(spec.get("outputs"), where)
    except BlocksegError as e:
        if not (package and origin("outputs") == "package"):
            raise
        stem = os.path.splitext(os.path.basename(package.rstrip("/")))[0]
        raise BlocksegError(f"{e} (the package's channel names); put 'outputs: [...]' in {stem}.yaml beside the package") from None
    sources["outputs"] = origin("outputs")
    activation, sources["activation"] = parse_activation(spec.get("activation"), reps, where)
    if sources["activation"] == "sidecar":
        sources["activation"] = origin("activation")
    if sigmoid_only and "activation" not in (k for k, v in (origins or {}).items() if v == "sidecar"):
        other = [r for r in reps if r not in ("B", "C", "aff", "gauss")]
        if other:
            raise BlocksegError(f"{where}: the package applies a sigmoid to every output, but {other} are not probabilities; "
                                "add 'activation:' to a sidecar beside the package")  # fmt: skip
        notes["activation"] = "the package's sigmoid postprocessing"
    if sources["activation"] == "default":
        notes["activation"] = "the network outputs logits: blockseg applies sigmoid / tanh / softmax (say 'activation: applied' if not)"
    return outputs, reps, index, activation


def _patch_geometry(spec: dict, where: str, fixed, origin, sources: dict, notes: dict) -> tuple:
    """``(patch, crop, halo, divisor)``: the input patch (an ONNX graph's fixed shape, if any),
    what the network crops and the halo it discards, and the divisor of admissible outputs."""
    patch = _triple(spec, "patch", where, 1)
    if patch is None and fixed:
        patch, sources["patch"] = tuple(int(s) for s in fixed), "model"
        notes["patch"] = "the ONNX graph's fixed input shape"
    elif patch is None:
        raise BlocksegError(f"{where}: add 'patch: [Z, Y, X]', the input patch the network was trained with (or runs well on)")
    else:
        sources["patch"] = origin("patch")
        if fixed and tuple(patch) != tuple(fixed):
            raise BlocksegError(f"{where}: patch {list(patch)} differs from the ONNX graph's fixed input shape {list(fixed)}")
    crop = _triple(spec, "crop", where) or (0, 0, 0)
    halo = _triple(spec, "halo", where) or (0, 0, 0)
    sources["crop"] = origin("crop") if "crop" in spec else "default"
    sources["halo"] = origin("halo") if "halo" in spec else "default"
    out = tuple(p - 2 * (c + h) for p, c, h in zip(patch, crop, halo))
    if any(o <= 0 for o in out):
        raise BlocksegError(f"{where}: patch {list(patch)} leaves no output after crop {list(crop)} and halo {list(halo)}")
    divisor = _triple(spec, "divisor", where, 1)
    if fixed:
        divisor, sources["divisor"] = tuple(out), "model"
        notes["divisor"] = "fixed input shape: only this patch runs"
    elif divisor is None:
        # the largest power of two dividing the output patch: an admissible patch is a multiple
        # of whatever the network's pooling needs, so this never admits a patch that cannot run
        divisor = tuple(int(o & -o) for o in out)
        sources["divisor"] = "default"
        notes["divisor"] = "the largest power of 2 dividing the patch (set divisor: to allow other sizes)"
    else:
        sources["divisor"] = origin("divisor")
    if any(o % d for o, d in zip(out, divisor)):
        raise BlocksegError(f"{where}: the patch's output {list(out)} is not a multiple of divisor {list(divisor)}")
    return patch, crop, halo, divisor


def _voxel_size(spec: dict, where: str, origin, sources: dict, notes: dict) -> tuple | None:
    """The training voxel size (µm, z y x) the sidecar gives; None: the image is not resampled."""
    voxel_size = spec.get("voxel_size")
    voxel_size = zyx(voxel_size, f"{where}: voxel_size (µm)", kind=float, above=0)
    sources["voxel_size"] = origin("voxel_size") if voxel_size is not None else "default"
    if voxel_size is None:
        notes["voxel_size"] = "the image is not resampled (predict --scale to do it)"
    return voxel_size


def _decoder(spec: dict, where: str, origin, sources: dict) -> dict | None:
    """The decoder the sidecar recommends (``{"name": ..., ...}``), checked; None: none."""
    decoder = spec.get("decoder")
    if decoder is not None:
        decoder = {"name": decoder} if isinstance(decoder, str) else dict(decoder)
        from ..segment import DECODERS  # defers numba and scipy (segment.decoders): only a sidecar naming a decoder needs them

        if decoder.get("name") not in DECODERS:
            raise BlocksegError(f"{where}: decoder {decoder.get('name')!r} is not one of {sorted(DECODERS)}")
    sources["decoder"] = origin("decoder") if decoder is not None else "default"
    return decoder


def _margin(spec: dict, net, patch, crop, halo, divisor, where: str, origin, sources: dict, notes: dict) -> tuple:
    """The context voxels per side the network needs: the sidecar's, or measured (``auto``)."""
    margin_spec = spec.get("margin")
    if margin_spec is None:
        raise BlocksegError(f"{where}: add 'margin:' (context voxels per side the network needs, 1 or 3 numbers) or "
                            "'margin: auto' to measure the receptive field by probing the network")  # fmt: skip
    if isinstance(margin_spec, str) and margin_spec.strip().lower() == "auto":
        margin, note = measure_margin(net, patch, crop, halo, divisor, where)
        sources["margin"], notes["margin"] = "measured", note
        return margin
    margin, sources["margin"] = _triple(spec, "margin", where), origin("margin")
    return margin


def _probe_forward(net, x: torch.Tensor, where: str) -> torch.Tensor:
    try:
        with torch.inference_mode():
            return _run_raw(net, x).float()
    except BlocksegError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise BlocksegError(f"{where}: the network fails on a (1, 1, {', '.join(map(str, x.shape[2:]))}) input "
                            f"({type(e).__name__}: {msg[0][:200] if msg else ''})") from None  # fmt: skip


def measure_margin(net, patch, crop, halo, divisor, where: str = "model") -> tuple[tuple[int, int, int], str]:
    """The receptive radius of a network, measured by impulse responses, as a margin.

    An impulse added to a random input patch changes exactly the outputs whose receptive
    field holds it; the largest distance (per axis) of a changed output voxel from the impulse,
    over impulses at the patch centre and up to half a divisor beside it (pooling phases), is the
    receptive radius. Returns ``(margin, note)``: the margin is the radius capped at half the
    output patch (minus the halo, which the engine discards anyway).
    """
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((1, 1, *patch), generator=gen)
    y0 = _probe_forward(net, x0, where)
    out = tuple(int(s) for s in y0.shape[2:])
    radius = [0, 0, 0]
    reached = [False, False, False]
    centre = [p // 2 for p in patch]
    # a second impulse half a divisor away (another pooling phase), kept near the centre
    shifted = [c + min(max(d // 2, 1), p // 8) for c, d, p in zip(centre, divisor, patch)]
    for k, c in enumerate((centre, shifted)):
        x1 = x0.clone()
        x1[(0, 0, *c)] += 4.0
        d = (_probe_forward(net, x1, where) - y0).abs().amax(dim=(0, 1))
        top = float(d.max())
        if not top > 0:
            continue
        hit = (d > top * PROBE_TOLERANCE).nonzero()
        for a in range(3):
            pos = hit[:, a] + crop[a]  # output voxel -> input coordinate
            radius[a] = max(radius[a], int((pos - c[a]).abs().max()))
            if k == 0:  # from the centre, a response at both borders means "at least half the patch"
                reached[a] |= bool(hit[:, a].min() == 0 and hit[:, a].max() == out[a] - 1)
    cap = [max((o - 2 * h) // 2, 0) for o, h in zip(out, halo)]
    margin = tuple(min(r, c) for r, c in zip(radius, cap))
    note = f"impulse response on a {_xyz(patch)} patch: receptive radius {_xyz(radius)}"
    if any(reached):
        note += " (the response reaches the patch border: the receptive field is at least the patch, or a normalisation spans it)"
    if margin != tuple(radius):
        note += f", capped at half the output patch {_xyz(cap)}"
    return margin, note  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the network
@register_architecture
class ForeignNet(BlocksegNet):
    """A TorchScript or ONNX network run as a :class:`BlocksegNet` (see the module docstring).

    ``forward`` returns the network's outputs for the stored channels, reordered into blockseg's
    representation order, its ``halo`` discarded; :meth:`postprocess` applies the activation of
    each representation whose sidecar says ``logits``.
    """

    architecture = "foreign"

    def __init__(self, path: str, sidecar: str | None = None, device: str | torch.device = "cpu"):
        desc = describe(path, sidecar)
        super().__init__(desc.representations)
        self.description = desc
        self.config = {"path": desc.weights, "sidecar": desc.sidecar}
        if desc.format == "torchscript" and torch.device(device).type != "cpu":
            # its own copy: the per-process one stays on the CPU (describe probes it there)
            net = _jit_load(desc.weights, device)
        else:
            net = _load_network(desc.weights, desc.format)
        if desc.format == "torchscript":
            self.net = net  # a submodule: .to(device) moves it
            self.onnx = None
        else:
            self.net = None
            self.onnx = net
        self.register_buffer("_index", torch.tensor(desc.index, dtype=torch.long), persistent=False)
        self._identity = desc.index == tuple(range(len(desc.outputs)))
        self._halo = desc.halo

    @property
    def geometry(self) -> Geometry:
        return self.description.geometry

    @property
    def fixed_patch(self) -> bool:
        """Whether the network runs on its patch only (an ONNX graph with a fixed input shape)."""
        return self.description.fixed_patch

    def parameter_count(self) -> int | None:
        """Weights of the network (an ONNX graph's initializers; None without the onnx package)."""
        if self.net is not None:
            return int(sum(p.numel() for p in self.net.parameters()))
        try:
            import onnx

            g = onnx.load(self.description.weights, load_external_data=False).graph
            return int(sum(int(np.prod(i.dims)) for i in g.initializer))
        except Exception:
            return None

    def activations_per_voxel(self) -> int | None:
        """Values per input voxel a forward holds (the plan's memory model), where known."""
        if self.onnx is not None:
            return self.onnx.activations_per_voxel(self.description.weights)
        total = 0
        for m in self.net.modules():
            name = getattr(m, "original_name", type(m).__name__)
            w = getattr(m, "weight", None)
            if name in ("Conv3d", "ConvTranspose3d") and isinstance(w, torch.Tensor) and w.ndim == 5:
                total += int(w.shape[0] if name == "Conv3d" else w.shape[1])
        return total or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _run_raw(self.net if self.net is not None else self.onnx, x)
        if not self._identity:
            y = y.index_select(1, self._index.to(y.device))
        hz, hy, hx = self._halo
        if hz or hy or hx:
            y = y[:, :, hz : y.shape[2] - hz, hy : y.shape[3] - hy, hx : y.shape[4] - hx]
        return y

    def postprocess(self, raw: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        act = self.description.activation
        if all(a == "logits" for a in act.values()):
            return super().postprocess(raw, inplace)
        out = raw if inplace else raw.clone()
        i = 0
        for r in self.representations:
            n = len(REPRESENTATIONS[r][0])
            x = out[:, i : i + n]
            if act[r] == "logits":
                if r in ("B", "C", "aff", "gauss"):
                    x.sigmoid_()
                elif r in ("D", "sdt"):
                    x.tanh_()
                elif r == "3label":
                    x.copy_(torch.softmax(x, dim=1))
            i += n
        return out


def load_foreign(path, device: str | torch.device = "cpu") -> tuple[ForeignNet, dict]:
    """``(network in eval mode on device, payload)``, as :func:`blockseg.models.load_checkpoint`."""
    model = ForeignNet(str(path), device=device)
    return model.to(device).eval(), model.description.payload()
