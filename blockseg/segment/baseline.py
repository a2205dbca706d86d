"""Classical baseline: Otsu threshold + distance-transform watershed (in memory).

The reference every learned method is compared against in docs/results.md: no training, one
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
    h_um: float | None = None,
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
        Nuclei brighter than background (fluorescence); False for dark nuclei (micro-CT,
        NucMM-Z-like EM).
    h_um : float, optional
        Seeds are the h-maxima of the distance map (regional maxima at least ``h_um`` µm above
        their surroundings; each connected plateau is one seed) instead of its peaks at least
        ``min_distance_um`` apart (which is then unused).

    Returns
    -------
    ndarray of uint32
        Instance labels, 0 = background, 1..N.

    Examples
    --------
    >>> import numpy as np
    >>> from blockseg.segment.baseline import otsu_watershed
    >>> img = np.zeros((20, 20, 40), np.float32)
    >>> img[5:15, 5:15, 5:15] = img[5:15, 5:15, 25:35] = 1
    >>> int(otsu_watershed(img, sigma_um=0, h_um=1.0, min_size=8).max())
    2
    """
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
    markers = _seeds(dist, fg, vs, min_distance_um, h_um)
    labels = watershed(-dist, markers, mask=fg)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    import fastremap

    labels, _ = fastremap.renumber(labels, preserve_zero=True)
    return labels.astype(np.uint32)


def _seeds(dist: np.ndarray, fg: np.ndarray, vs: np.ndarray, min_distance_um: float, h_um: float | None) -> np.ndarray:
    """Watershed markers of :func:`otsu_watershed`: h-maxima of the distance map, or its peaks."""
    if h_um is not None:
        from skimage.morphology import h_maxima

        markers, _ = ndi.label(h_maxima(dist, float(h_um)).astype(bool) & fg, structure=np.ones((3, 3, 3)))
        return markers.astype(np.int32)
    from skimage.feature import peak_local_max

    radius = np.maximum(1, np.round(min_distance_um / vs)).astype(int)
    footprint = np.ones(tuple(2 * r + 1 for r in radius), bool)
    peaks = peak_local_max(dist, footprint=footprint, labels=fg.astype(np.int32), exclude_border=False)
    markers = np.zeros(dist.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return markers
