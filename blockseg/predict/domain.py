"""One-line warnings when a shipped network is used far from its training data (issue 32 goal 5).

Said once per ``predict``, beside the warnings that exist elsewhere: the input's intensities far
from the training statistics (:mod:`blockseg.predict.normalise`), the other polarity than the
model card's (:mod:`blockseg.predict.polarity`) and voxel-size resampling by more than 2x
(:mod:`blockseg.predict.resample`). Added here, for the shipped networks (a user's own checkpoint
is not second-guessed):

* a shipped network trained on synthetic data only (``demo``: synthetic EM; ``fluo_synth``:
  synthetic fluorescence) says so, with what to use instead;
* nuclei whose estimated size (:mod:`blockseg.predict.size`) differs from the training nuclei's
  by more than :data:`FAR_SIZE` (resampled to match, but far outside what the network saw);
* voxels whose anisotropy (z over y/x) differs from the training voxels' by more than
  :data:`FAR_ANISOTROPY` (resampling stretches z: the network sees other textures).
"""

from __future__ import annotations

import os
from typing import Sequence

from ..checkpoints import SHIPPED_CHECKPOINTS

#: shipped networks that saw no real data, and what they saw
SYNTHETIC_ONLY = {
    "demo_bcd_cpv.pt": "synthetic NucMM-Z-like EM only (on real confocal crops it finds almost nothing: avAP about 0.01)",
    "fluo_bcd.pt": "synthetic fluorescence only (its thresholds do not transfer to real crops)",
}
#: an estimated nucleus size this many times larger or smaller than the training nuclei's warns
FAR_SIZE = 3.0
#: a voxel anisotropy this many times that of the training voxels (either way) warns
FAR_ANISOTROPY = 2.0


def domain_warnings(checkpoint: str, meta: dict, voxel_size: Sequence[float], voxel_size_source: str,
                    size: dict | None = None) -> list[str]:  # fmt: skip
    """The lines to warn for a network (``checkpoint`` path, its ``meta``data) run on an image of
    ``voxel_size``; ``size``: :func:`blockseg.predict.size.resolve_diameter`'s record.

    Examples
    --------
    >>> from blockseg.models import shipped_checkpoint_path
    >>> lines = domain_warnings(shipped_checkpoint_path("demo"), {}, (1, 1, 1), "metadata")
    >>> "synthetic NucMM-Z-like EM only" in lines[0]
    True
    """
    out: list[str] = []
    if os.path.basename(str(checkpoint)) not in SHIPPED_CHECKPOINTS.values():
        return out  # a user's own network: its trainer knows its data
    note = SYNTHETIC_ONLY.get(os.path.basename(str(checkpoint)))
    if note is not None:
        out.append(f"{os.path.basename(str(checkpoint))} was trained on {note}; for real nuclei use fluo (light microscopy), "
                   "em or xct, or fine-tune it (model.init)")  # fmt: skip
    net_d = meta.get("nucleus_diameter_um")
    est = (size or {}).get("diameter_um") if (size or {}).get("source") == "estimated" else None
    if net_d and est and not 1 / FAR_SIZE <= est / float(net_d) <= FAR_SIZE:
        out.append(f"this image's nuclei (about {est:.3g} µm, estimated) are {max(est / net_d, net_d / est):.1f}x "
                   f"{'larger' if est > net_d else 'smaller'} than the network's training nuclei ({float(net_d):.3g} µm): "
                   "resampled to match, but check the result on a few nuclei")  # fmt: skip
    net_vs = meta.get("voxel_size")
    if net_vs and voxel_size_source != "default":
        aniso = (float(voxel_size[0]) / (0.5 * (float(voxel_size[1]) + float(voxel_size[2]))))
        net_aniso = (float(net_vs[0]) / (0.5 * (float(net_vs[1]) + float(net_vs[2]))))
        if not 1 / FAR_ANISOTROPY <= aniso / net_aniso <= FAR_ANISOTROPY:
            out.append(f"this image's voxels are {aniso:.2g}x longer in z than in y/x, the network's training voxels "
                       f"{net_aniso:.2g}x: resampling stretches z by {aniso / net_aniso:.2g}x relative to y/x, "
                       "a texture it never saw")  # fmt: skip
    return out
