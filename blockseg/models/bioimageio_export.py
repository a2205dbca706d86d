"""Writing a bioimage.io model package (format 0.5) from a blockseg checkpoint
(``blockseg export-model CHECKPOINT OUT.zip``): TorchScript weights with their activations, the
exact sidecar in ``config.blockseg``, a test input and output, a cover and a README. The package
runs in any bioimage.io consumer, and in blockseg as a foreign network (:mod:`.bioimageio`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from typing import Sequence

import numpy as np
import torch

from ..errors import BlocksegError
from ..io.volume import open_volume
from . import resolve_checkpoint
from .checkpoint import load_checkpoint
from .bioimageio import is_package, require_spec
from .foreign import is_foreign


def _blobs(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A synthetic test image: bright gaussian nuclei on a dim noisy background (uint16 range)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = np.zeros(shape, np.float32)
    n = max(3, int(np.prod(shape) / 4000))
    r = max(2.0, min(shape) / 5)
    for _ in range(n):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        img += np.exp(-(((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * (r / 2) ** 2)))
    img = 200 + 3000 * np.clip(img, 0, 1) + rng.normal(0, 30, shape)
    return img.astype(np.float32)


class _Final(torch.nn.Module):
    """A blockseg network with its postprocessing: the package's outputs are final values."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.postprocess(self.model(x))


def _package_normalise(x: np.ndarray, norm: dict | None) -> np.ndarray:
    """The package's preprocessing as bioimage.io applies it (scale_range: this sample's percentiles)."""
    if not norm:
        return x
    if norm.get("scheme") == "percentile":
        lo, hi = np.percentile(x, [norm.get("low", 1.0), norm.get("high", 99.8)])
        return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)
    return ((x - norm.get("offset", 0.0)) / norm.get("scale", 1.0)).astype(np.float32)


def export_package(checkpoint, out_zip, image=None, authors: Sequence[str] = ("blockseg user",), license: str = "CC-BY-4.0",
                   cite: Sequence[tuple[str, str]] = (), name: str | None = None) -> dict:  # fmt: skip
    """Write a bioimage.io model package (format 0.5 zip) of a blockseg checkpoint.

    The package holds the network with its postprocessing as TorchScript (outputs are the final
    channels: probabilities, tanh maps, raw vectors), a test input (a centre crop of ``image``,
    else a synthetic nuclei image) and the output the network gives for it, a cover image, a
    README with the training data, the validation scores, the decoder and its thresholds and
    the voxel size, the axes (voxel size as their scale), the preprocessing (``scale_range`` or
    ``scale_linear``) and, in ``config.blockseg``, the exact sidecar blockseg reads it back with
    (same geometry: re-imported, it predicts what the checkpoint does). The package is
    validated with ``bioimageio.spec`` before it is returned.

    Returns
    -------
    dict
        ``{"path", "status", "warnings"}`` (status of bioimageio.spec's validation).
    """
    require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as m

    model, payload, out_zip = _export_inputs(checkpoint, out_zip)
    meta = payload.get("metadata") or {}
    raw = _test_input(image, tuple(model.geometry.input_patch))
    norm_small = _package_normalisation(meta.get("normalisation"))
    final = _Final(model).eval()
    x = torch.from_numpy(_package_normalise(raw, norm_small))[None, None]
    with torch.inference_mode():
        y = final(x).numpy()
    work = tempfile.mkdtemp(prefix="blockseg-export-")
    try:
        d = lambda n: os.path.join(work, n)  # noqa: E731
        _write_files(final, x, raw, y, model, payload, meta, norm_small, name, d)
        inp, out = _tensor_descrs(m, model, meta.get("voxel_size"), norm_small, d)
        cites = [m.CiteEntry(text=t, url=u) for t, u in cite] or [
            m.CiteEntry(text="Çiçek et al., 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation (2016)",
                        url="https://arxiv.org/abs/1606.06650")]  # fmt: skip
        try:
            descr = _model_descr(m, name or f"blockseg {payload['architecture']} nuclei {'-'.join(model.representations)}",
                                 model, payload, meta, authors, cites, license, d, inp, out, _export_sidecar(model, meta, norm_small))  # fmt: skip
        except BlocksegError:
            raise
        except Exception as e:  # pydantic: a name, license or author the format refuses
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            raise BlocksegError(f"the package description is not valid bioimage.io: {' '.join(lines[1:3])[:300]}") from None
        tmp = out_zip + ".partial"
        save_bioimageio_package(descr, output_path=tmp)
        os.replace(tmp, out_zip)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _validate_package(out_zip)


def _export_inputs(checkpoint, out_zip) -> tuple:
    """``(network, payload, zip path)`` of an export, checked: a blockseg checkpoint, a new .zip."""
    src = resolve_checkpoint(checkpoint)
    if is_foreign(src) or is_package(src):
        raise BlocksegError(f"{checkpoint}: export-model takes a blockseg checkpoint (a foreign network is shared as it is)")
    model, payload = load_checkpoint(src, "cpu")
    out_zip = str(out_zip)
    if not out_zip.endswith(".zip"):
        raise BlocksegError(f"{out_zip}: the package is written as a .zip file")
    if os.path.exists(out_zip):
        raise BlocksegError(f"{out_zip} already exists")
    return model, payload, out_zip


def _test_input(image, patch: tuple) -> np.ndarray:
    """The package's test input: the image's centre crop of the training patch, else synthetic nuclei."""
    if image is None:
        return _blobs(patch)

    vol = open_volume(str(image))
    if any(s < p for s, p in zip(vol.shape, patch)):
        raise BlocksegError(f"{image}: smaller than the network's patch {patch}")
    lo = [(s - p) // 2 for s, p in zip(vol.shape, patch)]
    return np.asarray(vol.array[tuple(slice(a, a + p) for a, p in zip(lo, patch))], dtype=np.float32)


def _package_normalisation(norm: dict | None) -> dict | None:
    """The checkpoint's normalisation as the package states it (percentiles or an affine map)."""
    if not norm:
        return None
    if norm.get("scheme") == "percentile":
        return {"scheme": "percentile", "low": float(norm.get("low", 1.0)), "high": float(norm.get("high", 99.8))}
    return {"offset": float(norm["offset"]), "scale": float(norm["scale"])}


def _write_files(final, x, raw, y, model, payload, meta, norm_small, name, d) -> None:
    """The package's files in the work folder ``d("")``: TorchScript weights, test tensors, cover, README."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(final, x, check_trace=False)  # the test output below is its check
    traced.save(d("weights.pt"))
    np.save(d("test_input.npy"), raw[None, None])
    np.save(d("test_output.npy"), y.astype(np.float32))
    _cover(raw, y, model.channels, d("cover.png"))
    with open(d("README.md"), "w") as f:
        f.write(_readme(name or f"blockseg {payload['architecture']} nuclei", model, payload, meta, norm_small))


def _tensor_descrs(m, model, vs, norm_small, d) -> tuple:
    """The input and output tensor descriptions: axes (voxel size as scale), sizes, halo, preprocessing."""
    geo = model.geometry
    unit = "micrometer" if vs else None
    # halo: the context margin (what a tiler should crop from each tile), at most half the training output;
    # the smallest input leaves more than twice the halo
    halos = [int(min(mg, (o - 1) // 2)) for mg, o in zip(geo.margin, geo.output_patch)]
    mins = [2 * c + dv * (2 * h // dv + 1) for c, dv, h in zip(geo.crop, geo.divisor, halos)]
    axes_in = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("raw")])] + [
        m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=mn, step=dv), unit=unit,
                         scale=float(vs[i]) if vs else 1.0)
        for i, (a, mn, dv) in enumerate(zip("zyx", mins, geo.divisor))
    ]  # fmt: skip
    pre = []
    if norm_small and "scheme" in norm_small:
        pre.append(m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(axes=[m.AxisId(a) for a in "zyx"],
                                                              min_percentile=norm_small["low"], max_percentile=norm_small["high"])))  # fmt: skip
    elif norm_small:
        pre.append(m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(gain=1.0 / norm_small["scale"],
                                                                offset=-norm_small["offset"] / norm_small["scale"])))  # fmt: skip
    inp = m.InputTensorDescr(id=m.TensorId("raw"), axes=axes_in, test_tensor=m.FileDescr(source=d("test_input.npy")),
                             preprocessing=pre, description="the image, raw intensities (preprocessing normalises them)")  # fmt: skip
    axes_out = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(c) for c in model.channels])] + [
        m.SpaceOutputAxisWithHalo(id=m.AxisId(a), size=m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a),
                                                                      offset=-2 * c),
                                  halo=h, unit=unit, scale=float(vs[i]) if vs else 1.0)
        for i, (a, c, h) in enumerate(zip("zyx", geo.crop, halos))
    ]  # fmt: skip
    out = m.OutputTensorDescr(id=m.TensorId("predictions"), axes=axes_out, test_tensor=m.FileDescr(source=d("test_output.npy")),
                              description="blockseg channels: " + ", ".join(f"{c} ({k})" for c, k in model.kinds.items()))  # fmt: skip
    return inp, out


def _export_sidecar(model, meta: dict, norm_small) -> dict:
    """The exact sidecar blockseg reads the package back with (``config.blockseg``)."""
    geo = model.geometry
    sidecar = {"outputs": list(model.channels), "activation": "applied", "patch": list(geo.input_patch),
               "margin": list(geo.margin), "crop": list(geo.crop), "divisor": list(geo.divisor),
               "normalisation": norm_small or "none"}  # fmt: skip
    if meta.get("voxel_size"):
        sidecar["voxel_size"] = [float(v) for v in meta["voxel_size"]]
    if meta.get("nucleus_diameter_um"):
        sidecar["nucleus_diameter_um"] = float(meta["nucleus_diameter_um"])
    if meta.get("decoder"):
        sidecar["decoder"] = {k: v for k, v in meta["decoder"].items() if k in ("name", "params")}
    return sidecar


def _validate_package(out_zip: str) -> dict:
    """bioimageio.spec's verdict on the written package (refused unless valid)."""
    from bioimageio.spec import load_model_description

    check = load_model_description(out_zip, format_version="latest")
    status = check.validation_summary.status
    if status not in ("valid-format", "passed"):
        raise BlocksegError(f"{out_zip}: bioimageio.spec does not validate the package ({status})")
    warns = [f"{'.'.join(map(str, w.loc))}: {w.msg}" for det in check.validation_summary.details for w in det.warnings]
    return {"path": out_zip, "status": status, "warnings": warns}


def _model_descr(m, name, model, payload, meta, authors, cites, license, d, inp, out, sidecar):
    """bioimageio.spec's ModelDescr of an export (raises pydantic's errors)."""
    return m.ModelDescr(
        name=name,
        description=f"3-D nuclei: {', '.join(model.channels)} predicted by a blockseg {payload['architecture']}; "
                    f"decode with blockseg segment ({(meta.get('decoder') or {}).get('name', 'its channels imply the decoder')})",
        authors=[m.Author(name=a) for a in authors], cite=cites, license=license,
        documentation=m.FileDescr(source=d("README.md")), covers=[m.FileDescr(source=d("cover.png"))],
        tags=["nuclei", "instance-segmentation", "3d", "unet", "blockseg", "fluorescence" if "3label" in model.representations else "electron-microscopy"],
        inputs=[inp], outputs=[out],
        weights=m.WeightsDescr(torchscript=m.TorchscriptWeightsDescr(source=d("weights.pt"),
                                                                     pytorch_version=m.Version(torch.__version__.split("+")[0]))),
        config={"blockseg": sidecar},
    )  # fmt: skip


def _cover(raw: np.ndarray, y: np.ndarray, channels, path: str) -> None:
    """Middle z-slice of the test input beside the first output channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = raw.shape[0] // 2
    a = raw[z]
    a = (a - a.min()) / (np.ptp(a) + 1e-12)
    b = y[0, 0, min(z, y.shape[2] - 1)]
    b = (b - b.min()) / (np.ptp(b) + 1e-12)
    h = min(a.shape[0], b.shape[0])
    w = min(a.shape[1], b.shape[1])
    plt.imsave(path, np.concatenate([a[:h, :w], b[:h, :w]], axis=1), cmap="gray")


def _readme(title: str, model, payload: dict, meta: dict, norm) -> str:
    geo = model.geometry
    val = meta.get("validation") or {}
    dec = meta.get("decoder") or {}
    training = meta.get("training") or {}
    vs = meta.get("voxel_size")
    if norm and "scheme" in norm:
        norm_text = f"each volume's {norm['low']:g} / {norm['high']:g} percentiles map to 0 / 1"
    elif norm:
        norm_text = f"(x - {norm['offset']:g}) / {norm['scale']:g}"
    else:
        norm_text = "none"
    lines = [
        f"# {title}",
        "",
        f"A blockseg `{payload['architecture']}` network predicting {', '.join(f'`{c}`' for c in model.channels)} "
        f"({', '.join(model.representations)}) for 3-D nuclei instance segmentation.",
        "",
        "## Use",
        "",
        "```bash",
        "blockseg predict image.zarr THIS.zip predictions.zarr   # blockwise on Dask, seamless",
        "blockseg segment predictions.zarr labels.zarr",
        "```",
        "",
        "Outputs are final values: probabilities (sigmoid / softmax), tanh maps and raw vectors as named by the channels.",
        "",
        "## Training data",
        "",
        f"Voxel size {' x '.join(f'{v:g}' for v in vs) + ' µm (z, y, x)' if vs else 'not recorded'}; "
        f"nucleus diameter {meta['nucleus_diameter_um']:.3g} µm." if meta.get("nucleus_diameter_um") else
        f"Voxel size {' x '.join(f'{v:g}' for v in vs) + ' µm (z, y, x)' if vs else 'not recorded'}.",
        "",
        f"Training: {', '.join(f'{k} {v}' for k, v in training.items() if isinstance(v, (int, float, str)) and len(str(v)) < 80) or 'not recorded'}.",
        "",
        f"Normalisation: {norm_text}.",
        "",
        f"Geometry: training patch {list(geo.input_patch)}, context margin {list(geo.margin)}, valid crop {list(geo.crop)}, "
        f"sizes in steps of {list(geo.divisor)}.",
        "",
        "## Decoder",
        "",
        (f"`{dec['name']}` with " + ", ".join(f"{k} = {v}" for k, v in (dec.get("params") or {}).items())
         + (f" (tuned on the {dec['tuned_on']} volume)" if dec.get("tuned_on") else "")) if dec else "Not recorded: the channels imply it.",
        "",
        "# Validation",
        "",
        ("Measured by blockseg on its validation volume: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                                       for k, v in val.items() if not isinstance(v, list))) if val else "Not recorded.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)
