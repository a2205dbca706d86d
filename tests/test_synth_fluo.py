"""The synthetic fluorescence look (blockseg synth --mode fluo / --preset fluo)."""

from __future__ import annotations

import numpy as np

from blockseg.synth import preset_params, render_region


def test_fluo_look_is_blockwise_exact_and_looks_like_fluorescence():
    p = preset_params("fluo", shape=(40, 80, 80), seed=1)
    whole = render_region(p, (slice(0, 40), slice(0, 80), slice(0, 80)))
    part = render_region(p, (slice(9, 31), slice(17, 63), slice(3, 80)))
    assert np.array_equal(part["image"], whole["image"][9:31, 17:63, 3:80])
    img, lab = whole["image"].astype(np.float64), whole["labels"]
    fg, bg = img[lab > 0], img[lab == 0]
    assert np.median(fg) > 4 * np.median(bg)  # bright nuclei, dark background
    # anisotropic PSF (sigma 0.6 µm along z, 0.2 µm in-plane): per µm, edges are sharper in-plane
    assert p.psf_sigma[0] > p.psf_sigma[1] == p.psf_sigma[2]
    gz = np.abs(np.diff(img, axis=0)).mean() / p.voxel_size[0]
    gy = np.abs(np.diff(img, axis=1)).mean() / p.voxel_size[1]
    assert gy > gz
    # shot noise: the spread inside a nucleus grows with its brightness
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    big = ids[counts > 400]
    interior = lab * (np.abs(np.diff(np.pad(lab, ((0, 0), (0, 0), (0, 1)), mode="edge"), axis=2)) == 0)
    means = np.array([img[interior == i].mean() for i in big])
    sds = np.array([img[interior == i].std() for i in big])
    assert np.corrcoef(means, sds)[0, 1] > 0
    # intensity drift: attenuation with depth
    assert img[:8][lab[:8] > 0].mean() > img[-8:][lab[-8:] > 0].mean()
