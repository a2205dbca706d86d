"""The inference patch: larger than the training patch where memory allows (``--patch auto``).

Fully convolutional networks run on larger patches at inference than in training. With the
overlap between tiles fixed in voxels (it is set by the network's receptive field, not by the
patch), a larger patch lowers the fraction of output voxels computed twice. :func:`choose_patch`
picks, per axis, an output patch ``stride + overlap`` whose stride divides the block shape
(preferring the one that computes the fewest output voxels along the axis):
tiles then start on block boundaries, shifted by the reflect pad, so each block owns the tiles
centred in it and they reach into its neighbours by only ``pad`` (below) and ``overlap - pad``
or ``overlap`` (above) voxels: the partial sums exchanged between blocks (the engine's
scratch) stay thin. The best such patch that fits the
memory budget wins; the reason is kept with the choice and written to the store's provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import BlocksegError
from ..models.base import Geometry
from ..zyx import zyx

#: activation budget of one forward batch on a CPU worker
CPU_PATCH_BUDGET = 1 << 30
#: fraction of a GPU's free memory given to one forward batch
GPU_PATCH_FRACTION = 0.5
PATCH_MODES = ("auto", "train")


@dataclass(frozen=True)
class PatchChoice:
    """The inference patch of a run and why it was chosen.

    Attributes
    ----------
    patch : tuple of int
        Input patch the network runs on.
    mode : str
        ``"auto"``, ``"train"`` or ``"explicit"``.
    train_patch : tuple of int
        The network's training patch.
    budget_bytes : int
        Memory budget of one forward batch (``auto`` only, else 0).
    reason : str
        One line for the dry run and the provenance.
    """

    patch: tuple[int, int, int]
    mode: str
    train_patch: tuple[int, int, int]
    budget_bytes: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return {"patch": list(self.patch), "mode": self.mode, "train_patch": list(self.train_patch),
                "budget_bytes": self.budget_bytes, "reason": self.reason}  # fmt: skip


def patch_memory(patch: Sequence[int], batch_size: int, activations_per_voxel: int) -> int:
    """Bytes of one forward batch: float32 input plus ``activations_per_voxel`` values per voxel."""
    return batch_size * math.prod(patch) * 4 * (1 + activations_per_voxel)


def device_budget(device: str) -> int:
    """Forward-batch budget on ``device``: half the free memory of a visible CUDA device, else
    :data:`CPU_PATCH_BUDGET`."""
    if device != "cpu":
        try:
            if torch.cuda.is_available():
                index = int(device.split(":")[1]) if ":" in device else 0
                free, _ = torch.cuda.mem_get_info(index)
                return int(free * GPU_PATCH_FRACTION)
        except Exception:  # pragma: no cover - a broken CUDA setup falls back to the CPU budget
            pass
    return CPU_PATCH_BUDGET


def _axis_candidates(size: int, block: int, pad: int, crop: int, divisor: int, overlap: int, out0: int) -> list[int]:
    """Admissible output patches of one axis, in order of preference, never smaller than the
    training one.

    Candidates: ``stride + overlap`` with ``stride`` a divisor of ``block`` (tiles aligned with
    blocks), fewest output voxels computed along the axis first (larger first among equals);
    then the training output ``out0``. An axis whose whole domain fits one tile gets
    that single tile instead of anything larger.
    """
    length = size + 2 * pad
    cands = []
    for stride in sorted({block // k for k in range(1, block + 1) if block % k == 0}, reverse=True):
        out = stride + overlap
        if out % divisor == 0 and out >= out0:
            cands.append(out)
    whole = -(-length // divisor) * divisor  # one tile covering the domain
    cands = {min(c, max(whole, out0)) for c in cands} - {out0}

    def computed(out: int) -> int:  # output voxels the axis computes (last tile overhanging)
        return (1 + -(-max(length - out, 0) // (out - overlap))) * out

    # fewest voxels computed first (larger first among equals); the training patch comes last
    return sorted(cands, key=lambda o: (computed(o), -o)) + [out0]


def _axis_candidates_for_regions(
    size: int, regions: Sequence[tuple[int, int]], pad: int, divisor: int, overlap: int, out0: int
) -> list[int]:
    """Admissible output patches of one axis for blocks that each run every tile reaching their
    region (resampled runs: no partial sums, a tile reaching two regions runs twice).

    ``regions`` holds the ``(start, stop)`` range the blocks along this axis need on the
    lattice's grid. Candidates are every multiple of ``divisor`` from the training output
    ``out0`` up to one tile over the whole domain, ordered by the output voxels the blocks
    compute along the axis (the sum over regions of tiles reaching it times ``out``; fewest
    first, larger first among equals), then ``out0``. Tile starts follow the auto lattice
    (``-pad + k * stride``, the last tile overhanging), as :class:`~.lattice.AxisLattice` builds them.
    """
    length = size + 2 * pad
    whole = max(-(-length // divisor) * divisor, out0)
    lo = np.array([r[0] for r in regions], dtype=np.int64)
    hi = np.array([r[1] for r in regions], dtype=np.int64)

    def computed(out: int) -> int:
        stride = out - overlap
        n = 1 + -(-max(length - out, 0) // stride)
        starts = -pad + np.arange(n, dtype=np.int64) * stride
        k0 = np.searchsorted(starts + out, lo, side="right")  # first tile ending after lo
        k1 = np.searchsorted(starts, hi, side="left")  # tiles starting before hi
        return int(np.maximum(k1 - k0, 0).sum()) * out

    first = -(-max(out0, overlap + 1) // divisor) * divisor
    cands = [o for o in range(first, whole + 1, divisor) if o != out0]
    return sorted(cands, key=lambda o: (computed(o), -o)) + [out0]


def choose_patch(
    geometry: Geometry,
    shape: Sequence[int],
    block_shape: Sequence[int],
    overlap: Sequence[int],
    batch_size: int,
    activations_per_voxel: int,
    mode: str | Sequence[int] | int | None = "auto",
    device: str = "cpu",
    budget_bytes: int | None = None,
    regions: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> PatchChoice:
    """The inference patch for a run (see the module docstring).

    Parameters
    ----------
    geometry : Geometry
        The network's spatial contract (training patch, crop, margin, divisor).
    shape, block_shape : sequence of int
        Volume and block core shapes.
    overlap : sequence of int
        Tile overlap in voxels per axis.
    batch_size : int
        Patches per forward pass of the run: named in the reason only. The budget is checked
        for a batch of :data:`~blockseg.defaults.DEFAULT_BATCH_SIZE` patches whatever the run's
        batch, so that a speed knob never changes the patch (and with it the output).
    activations_per_voxel : int
        Values per input voxel a forward holds (the memory model of the plan's estimate).
    mode : "auto", "train", int or 3 ints
        ``"auto"``: the largest block-aligned patch within the budget; ``"train"`` (or None):
        the training patch; numbers: that patch.
    device : str
        Where the network runs (sets the default budget, :func:`device_budget`).
    budget_bytes : int, optional
        Override of the forward-batch memory budget.
    regions : per axis, a sequence of ``(start, stop)``, optional
        For resampled runs (``shape`` is then the network's grid): the ranges the blocks along
        each axis need on that grid. Blocks do not align with the lattice there and each runs
        every tile reaching its region, so candidates are ranked by the tiles the regions
        actually reach (:func:`_axis_candidates_for_regions`) instead of by block alignment.
    """
    train = tuple(geometry.input_patch)
    if mode is None or mode == "train":
        return PatchChoice(train, "train", train, 0, "the network's training patch (--patch train)")
    if not isinstance(mode, str):
        vals = zyx(mode, "patch", at_least=1)
        geometry.output_for(vals)  # raises if not admissible
        return PatchChoice(vals, "explicit", train, 0, "given")  # type: ignore[arg-type]
    if mode != "auto":
        raise BlocksegError(f"patch is 'auto', 'train' or voxel sizes, got {mode!r}")
    budget = device_budget(device) if budget_bytes is None else int(budget_bytes)
    out0 = geometry.output_patch
    if regions is None:
        per_axis = [
            _axis_candidates(s, b, p, c, d, o, o0)
            for s, b, p, c, d, o, o0 in zip(shape, block_shape, geometry.margin, geometry.crop, geometry.divisor, overlap, out0)
        ]
    else:
        per_axis = [
            _axis_candidates_for_regions(s, r, p, d, o, o0)
            for s, r, p, d, o, o0 in zip(shape, regions, geometry.margin, geometry.divisor, overlap, out0)
        ]
    idx = [0, 0, 0]

    def patch_of(ix) -> tuple[int, int, int]:
        return tuple(per_axis[a][ix[a]] + 2 * geometry.crop[a] for a in range(3))  # type: ignore[return-value]

    # shrink the axis with the largest patch (relative to its training patch) until it fits; the
    # batch is the shared default's, not the run's: the batch size is a speed knob
    ref = DEFAULT_BATCH_SIZE
    while patch_memory(patch_of(idx), ref, activations_per_voxel) > budget:
        shrinkable = [a for a in range(3) if idx[a] + 1 < len(per_axis[a])]
        if not shrinkable:
            break
        a = max(shrinkable, key=lambda a: (per_axis[a][idx[a]] / out0[a], per_axis[a][idx[a]]))
        idx[a] += 1
    patch = patch_of(idx)
    need = patch_memory(patch, ref, activations_per_voxel)
    if patch == train:
        why = f"auto: the training patch (a larger one needs more than the {budget / 2**20:.0f} MiB budget)"
    else:
        kind = "block-aligned patch" if regions is None else "patch (on the resampled grid)"
        why = (f"auto: {kind} computing the fewest voxels within a {budget / 2**20:.0f} MiB forward budget "
               f"({need / 2**20:.0f} MiB for a batch of {ref}, whatever the batch size); training patch {train}")  # fmt: skip
        if regions is None:  # the stride divides the block: another block shape may pick another patch
            why += (f"; chosen for blocks {tuple(int(b) for b in block_shape)}: another block shape may choose another "
                    "patch, and tiles blended differently change the output slightly (--patch Z Y X or --patch train fixes it)")  # fmt: skip
    return PatchChoice(patch, "auto", train, budget, why)  # type: ignore[arg-type]
