"""Is a volume what ``evaluate`` needs: integer instance labels (0 = background)?

``evaluate`` scores whatever it is given as labels, so a raw image or a probability map passed
by mistake yields a plausible-looking report ("180 predicted", AP 0). :func:`check_label_volume`
refuses such inputs before anything is read in bulk or written, in one line that says what the
volume looks like instead and what to do. The checks, in order:

1. the dtype must be integer (a float volume is a probability map or an image);
2. a channel of a blockseg prediction store (its ``blockseg.kind`` attribute, or a parent group
   with ``blockseg.predictions``) holds probabilities, never labels;
3. a volume marked as a label image (NGFF ``image-label``) is accepted as it is;
4. otherwise a sample from the middle of the volume (at most :data:`SAMPLE_VOXELS`) must look
   like labels: piecewise constant. In instance labels almost every voxel equals its neighbour
   along x (only instance borders differ); in a raw image noise makes most neighbours differ.
   A sample where fewer than :data:`MIN_EQUAL_NEIGHBOURS` of the neighbour pairs are equal is
   refused. Measured on the six real crops beside the checkout (EM, X-ray, light sheet,
   confocal): their images have 2.5-16 % equal neighbours, their label volumes 81-99.6 %.

``labels_anyway=True`` (``--labels-anyway``) skips checks 2-4 for volumes that really are
labels but look otherwise (e.g. dense labels of one- or two-voxel objects).
"""

from __future__ import annotations

import numpy as np
import zarr

from ..errors import BlocksegError

#: at most this many voxels are read for the content check
SAMPLE_VOXELS = 1 << 20
#: a sample with fewer equal x-neighbour pairs than this is not labels
MIN_EQUAL_NEIGHBOURS = 0.5
HINT = "pass --labels-anyway (labels_anyway=True) if it really holds instance labels"


def _attrs(path: str) -> dict:
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        return {}


def _prediction_store_of(path: str) -> str | None:
    """The prediction store a volume path lies in (``p.zarr`` for ``p.zarr/B``), else None."""
    bare = path.split("#")[0].rstrip("/")
    attrs = _attrs(bare)
    parent = bare.rpartition("/")[0]
    in_store = "predictions" in dict(_attrs(parent).get("blockseg", {})) if parent else False
    if in_store or "kind" in dict(attrs.get("blockseg", {})):
        return parent or bare
    return None


def _is_label_image(path: str) -> bool:
    attrs = _attrs(path.split("#")[0].rstrip("/"))
    return "image-label" in dict(attrs.get("ome", {})) or "image-label" in attrs


def equal_neighbour_fraction(sample: np.ndarray) -> float:
    """Fraction of x-neighbour voxel pairs of ``sample`` that hold the same value (1.0 if none)."""
    sample = np.asarray(sample)
    if sample.shape[-1] < 2:
        return 1.0
    return float(np.count_nonzero(sample[..., 1:] == sample[..., :-1])) / (sample[..., 1:].size or 1)


def central_sample(array, max_voxels: int = SAMPLE_VOXELS) -> np.ndarray:
    """A (z, y, x) box of at most ``max_voxels`` voxels from the middle of ``array``."""
    shape = tuple(int(s) for s in array.shape)
    box = list(shape)
    while int(np.prod(box)) > max_voxels:
        a = int(np.argmax([b / max(1, 16 if k == 0 else 64) for k, b in enumerate(box)]))
        box[a] = max(1, box[a] // 2)
    sl = tuple(slice((s - b) // 2, (s - b) // 2 + b) for s, b in zip(shape, box))
    return np.asarray(array[sl])


def check_label_volume(volume, role: str, labels_anyway: bool = False) -> None:
    """Raise :class:`BlocksegError` (one line) unless ``volume`` looks like instance labels.

    Parameters
    ----------
    volume : blockseg.io.volume.Volume
        The opened volume (its ``path`` locates the metadata).
    role : str
        How the volume is named in the message, e.g. ``"--pred"``.
    labels_anyway : bool
        Only check the dtype (see the module docstring).
    """
    path = str(volume.path)
    dtype = np.dtype(volume.dtype) if hasattr(volume, "dtype") else np.dtype(volume.array.dtype)
    if dtype.kind not in "iu":
        raise BlocksegError(
            f"{role} {path}: labels must be integers, got dtype {dtype} (a probability map or an image, not instance labels)"
        )
    if labels_anyway:
        return
    store = _prediction_store_of(path)
    if store is not None:
        raise BlocksegError(
            f"{role} {path}: a channel of the prediction store {store} (probabilities, not instance labels); "
            f"segment the store first (blockseg segment {store} OUT.zarr) and evaluate OUT.zarr"
        )
    if _is_label_image(path):
        return
    eq = equal_neighbour_fraction(central_sample(volume.array))
    if eq < MIN_EQUAL_NEIGHBOURS:
        raise BlocksegError(
            f"{role} {path}: does not look like instance labels (only {eq:.0%} of neighbouring voxels are equal, "
            f"as in a raw image; labels are constant inside each object); {HINT}"
        )
