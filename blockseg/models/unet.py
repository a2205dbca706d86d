"""Residual 3D U-Net in the U3D-BCD style (NucMM, Lin et al. 2021), with "same" padding.

Layout (``L = len(widths)`` stages)::

    input conv (k = 1x5x5 if the first stage is anisotropic, else 3x3x3)
    stage 0 .. L-1:  [down-sampling by a strided conv, except stage 0] + residual block(s)
    decoder L-2 .. 0: up-sample (trilinear) + 1x1x1 conv to the stage width, ADD the skip,
                      residual block
    one 1x1x1 head per representation, concatenated in representation order

A residual block is ``conv-norm-act-conv-norm`` plus the input (a 1x1x1 projection when the
width changes), then the activation. The first ``anisotropic`` stages use ``1x3x3`` kernels and
their down-sampling is ``1x2x2`` (for EM data whose z resolution is coarser than x/y); deeper
stages are isotropic (``3x3x3``, stride 2).

Normalisation is :class:`torch.nn.BatchNorm3d` (default) or none: both act per voxel at
inference, so the output at a voxel does not depend on where a block starts -- GroupNorm or
InstanceNorm would normalise with statistics of the whole patch and break blockwise ==
whole-volume inference.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BlocksegError
from .base import REPRESENTATIONS, BlocksegNet, Geometry, register_architecture

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}


def _norm(kind: str, n: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(n)
    if kind == "none":
        return nn.Identity()
    raise BlocksegError(f"norm must be 'batch' or 'none', got {kind!r}")


def _pad(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


class ResidualBlock(nn.Module):
    """``act(norm(conv(act(norm(conv(x))))) + shortcut(x))`` with same padding."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], norm: str, act: str, dropout: float = 0.0):
        super().__init__()
        k = tuple(kernel)
        self.conv1 = nn.Conv3d(cin, cout, k, padding=_pad(k), bias=norm == "none")
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv3d(cout, cout, k, padding=_pad(k), bias=norm == "none")
        self.norm2 = _norm(norm, cout)
        self.act = ACTIVATIONS[act]()
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x):
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(self.drop(y)))
        return self.act(y + self.skip(x))


def _checked_widths(widths, anisotropic: int, blocks_per_stage: int, activation: str) -> list[int]:
    """The stage widths as ints, with the other architecture choices checked (one-line errors)."""
    widths = [int(w) for w in widths]
    if len(widths) < 1 or any(w < 1 for w in widths):
        raise BlocksegError(f"widths must be positive channel counts, got {widths}")
    if not 0 <= anisotropic <= len(widths) or blocks_per_stage < 1:
        raise BlocksegError("anisotropic must be in [0, len(widths)] and blocks_per_stage >= 1")
    if activation not in ACTIVATIONS:
        raise BlocksegError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return widths


def _encoder_stages(widths, strides, kernels, blocks_per_stage: int, norm: str, activation: str, dropout: float):
    """``(down, encoder)``: the strided down-sampling convolution into each stage after the first,
    and each stage's residual blocks (dropout in the last), created stage by stage."""
    down, encoder = nn.ModuleList(), nn.ModuleList()
    n = len(widths)
    for i in range(n):
        cin = widths[0] if i == 0 else widths[i - 1]
        if i > 0:
            s = strides[i]
            down.append(nn.Sequential(
                nn.Conv3d(cin, widths[i], s, stride=s, bias=norm == "none"), _norm(norm, widths[i]), ACTIVATIONS[activation](),
            ))  # fmt: skip
            cin = widths[i]
        drop = dropout if i == n - 1 else 0.0
        blocks = [ResidualBlock(cin if b == 0 else widths[i], widths[i], kernels[i], norm, activation, drop)
                  for b in range(blocks_per_stage)]  # fmt: skip
        encoder.append(nn.Sequential(*blocks))
    return down, encoder


@register_architecture
class ResUNet3D(BlocksegNet):
    """Residual 3D U-Net with additive skips and one head per representation.

    Parameters
    ----------
    representations : sequence of str
        Output representations (see :data:`blockseg.models.base.REPRESENTATIONS`), e.g.
        ``["B", "C", "D", "cpv"]`` or ``["3label", "cpv"]``.
    widths : sequence of int
        Channels per stage; ``len(widths)`` stages, ``len(widths) - 1`` down-samplings.
    anisotropic : int
        Number of leading stages with ``1x3x3`` kernels and ``1x2x2`` down-sampling.
    blocks_per_stage : int
        Residual blocks per encoder stage (the decoder has one per stage).
    in_channels : int
        Image channels.
    input_patch : sequence of int
        Training / default inference patch (z, y, x); must be a multiple of the divisor.
    norm : {"batch", "none"}
    activation : {"elu", "relu", "leaky_relu"}
    dropout : float
        Dropout3d probability inside the bottleneck blocks (0: none).
    margin : sequence of int, optional
        Context halo per side; default :meth:`default_margin`.
    """

    architecture = "resunet3d"

    def __init__(
        self,
        representations: Sequence[str] = ("B", "C", "D"),
        widths: Sequence[int] = (16, 32, 64, 128),
        anisotropic: int = 0,
        blocks_per_stage: int = 1,
        in_channels: int = 1,
        input_patch: Sequence[int] = (32, 128, 128),
        norm: str = "batch",
        activation: str = "elu",
        dropout: float = 0.0,
        margin: Sequence[int] | None = None,
    ):
        super().__init__(representations)
        widths = _checked_widths(widths, anisotropic, blocks_per_stage, activation)
        self.config = {
            "representations": list(self.representations),
            "widths": widths,
            "anisotropic": int(anisotropic),
            "blocks_per_stage": int(blocks_per_stage),
            "in_channels": int(in_channels),
            "input_patch": [int(p) for p in input_patch],
            "norm": norm,
            "activation": activation,
            "dropout": float(dropout),
            "margin": None if margin is None else [int(m) for m in margin],
        }
        n = len(widths)
        kernels = [(1, 3, 3) if i < anisotropic else (3, 3, 3) for i in range(n)]
        # stage i > 0 is reached by down-sampling with stride strides[i]
        self._strides = [(1, 1, 1)] + [(1, 2, 2) if i - 1 < anisotropic else (2, 2, 2) for i in range(1, n)]
        k_in = (1, 5, 5) if anisotropic > 0 else (3, 3, 3)
        self._kernels, self._k_in = kernels, k_in

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], k_in, padding=_pad(k_in), bias=norm == "none"),
            _norm(norm, widths[0]),
            ACTIVATIONS[activation](),
        )
        self.down, self.encoder = _encoder_stages(widths, self._strides, kernels, blocks_per_stage, norm, activation, dropout)
        self.reduce = nn.ModuleList(nn.Conv3d(widths[i + 1], widths[i], 1) for i in range(n - 1))
        self.decoder = nn.ModuleList(ResidualBlock(widths[i], widths[i], kernels[i], norm, activation) for i in range(n - 1))
        self.heads = nn.ModuleDict(
            {r: nn.Conv3d(widths[0], len(REPRESENTATIONS[r][0]), 1) for r in self.representations}
        )
        self._geometry = Geometry(
            tuple(input_patch), (0, 0, 0), self.default_margin() if margin is None else tuple(margin), self.divisor
        )
        self._geometry.output_for(self._geometry.input_patch)  # the patch must be admissible

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Product of the down-sampling strides per axis."""
        return tuple(math.prod(s[a] for s in self._strides) for a in range(3))  # type: ignore[return-value]

    def receptive_radius(self) -> tuple[int, int, int]:
        """Half-width (voxels) of the receptive field per axis, from the layer list.

        A same-padded conv of kernel ``k`` at a level of cumulative stride ``j`` adds
        ``(k // 2) * j``; a strided down-sampling conv of stride ``s`` adds ``(s - 1) * j``; the
        trilinear up-sampling from a level of stride ``j`` adds ``j``.
        """
        r = [self._k_in[a] // 2 for a in range(3)]
        jump = [1, 1, 1]
        jumps = []
        for i in range(len(self._kernels)):
            if i > 0:
                for a in range(3):
                    r[a] += (self._strides[i][a] - 1) * jump[a]
                    jump[a] *= self._strides[i][a]
            jumps.append(list(jump))
            convs = 2 * self.config["blocks_per_stage"] + (2 if i < len(self._kernels) - 1 else 0)
            for a in range(3):
                r[a] += convs * (self._kernels[i][a] // 2) * jump[a]
        for i in range(1, len(jumps)):
            for a in range(3):
                r[a] += jumps[i][a]
        return tuple(r)  # type: ignore[return-value]

    def default_margin(self) -> tuple[int, int, int]:
        """Context margin per side: half the receptive radius, rounded up to the divisor.

        With same padding a voxel's output depends on the whole receptive field, but the
        weights of far-away inputs are tiny; zero padding at a block border perturbs the output
        within roughly half the receptive radius in practice. A halo of this margin makes
        blockwise predictions agree with whole-volume ones to within the float16/uint8 storage
        precision for trained networks (see the predict tests); raise it (``margin=``) for an
        exact match if storage is float32.
        """
        return tuple(int(math.ceil(r / 2 / d) * d) for r, d in zip(self.receptive_radius(), self.divisor))  # type: ignore[return-value]

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution decoder features ``(N, widths[0], z, y, x)``."""
        d = self.divisor
        if any(s % k for s, k in zip(x.shape[-3:], d)):
            raise BlocksegError(f"input spatial shape {tuple(x.shape[-3:])} must be a multiple of {d}")
        x = self.stem(x)
        skips = []
        for i, enc in enumerate(self.encoder):
            if i > 0:
                x = self.down[i - 1](x)
            x = enc(x)
            skips.append(x)
        for i in range(len(self.decoder) - 1, -1, -1):
            x = F.interpolate(x, size=skips[i].shape[-3:], mode="trilinear", align_corners=False)
            x = self.decoder[i](self.reduce[i](x) + skips[i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.cat([self.heads[r](f) for r in self.representations], dim=1)
