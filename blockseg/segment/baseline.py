"""Classical baseline: Otsu threshold + distance-transform watershed (in memory).

The reference every learned method is compared against in the README: no training, one
global threshold, one seed per distance-transform peak. For small volumes only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import BlocksegError


def otsu_watershed(
    image: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    sigma_um: float = 0.5,
    min_distance_um: float = 2.0,
    min_size: int = 64,
    bright_nuclei: bool = True,
) -> np.ndarray:
    """Segment nuclei with Otsu's threshold and a watershed on the distance transform.

    Parameters
    ----------
    image : ndarray, 3D
        Raw intensities, axes (z, y, x).
    voxel_size : sequence of float, optional
        µm per voxel (default 1); smoothing, distances and peak spacing are physical.
    sigma_um : float
        Gaussian pre-smoothing (µm).
    min_distance_um : float
        Smallest distance between two seeds (µm), i.e. about the smallest nucleus radius.
    min_size : int
        Instances with fewer voxels are removed.
    bright_nuclei : bool
        Nuclei brighter than background (fluorescence); False for EM-like dark nuclei.

    Returns
    -------
    ndarray of uint32
        Instance labels, 0 = background, 1..N.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise BlocksegError(f"otsu_watershed needs a 3D image, got {image.ndim}D")
    vs = np.ones(3) if voxel_size is None else np.asarray(voxel_size, float)
    smooth = ndi.gaussian_filter(image, sigma=sigma_um / vs) if sigma_um > 0 else image
    if not bright_nuclei:
        smooth = -smooth
    if np.ptp(smooth) == 0:
        return np.zeros(image.shape, np.uint32)
    fg = smooth > threshold_otsu(smooth)
    fg = ndi.binary_fill_holes(fg)
    dist = ndi.distance_transform_edt(fg, sampling=vs)
    radius = np.maximum(1, np.round(min_distance_um / vs)).astype(int)
    footprint = np.ones(tuple(2 * r + 1 for r in radius), bool)
    peaks = peak_local_max(dist, footprint=footprint, labels=fg.astype(np.int32), exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    import fastremap

    labels, _ = fastremap.renumber(labels, preserve_zero=True)
    return labels.astype(np.uint32)
