"""A tiny convolutional network for engine tests and quick experiments (random weights)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import BlocksegNet, Geometry, register_architecture


@register_architecture
class TinyConvNet(BlocksegNet):
    """Two 3x3x3 convolutions (ELU between them, optional dropout), valid or same padding.

    With ``valid=True`` each convolution loses one voxel per side, so ``crop = (2, 2, 2)``; with
    same (zero) padding the patch border sees zeros, and ``margin`` asks the engine for reflected
    context at the volume borders.
    """

    architecture = "tiny_conv"
    supports_mc_dropout = True

    def __init__(
        self,
        representations: Sequence[str] = ("B", "C", "D"),
        width: int = 4,
        valid: bool = True,
        input_patch: Sequence[int] = (12, 20, 20),
        margin: Sequence[int] = (0, 0, 0),
        dropout: float = 0.1,
        seed: int = 0,
    ):
        super().__init__(representations)
        self.config = {
            "representations": list(self.representations),
            "width": width,
            "valid": valid,
            "input_patch": list(input_patch),
            "margin": list(margin),
            "dropout": dropout,
            "seed": seed,
        }
        pad = 0 if valid else 1
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv3d(1, width, 3, padding=pad)
        self.act = nn.ELU()
        self.drop = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(width, len(self.channels), 3, padding=pad)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        c = 2 if valid else 0
        self._geometry = Geometry(tuple(input_patch), (c, c, c), tuple(margin))

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(self.act(self.conv1(x))))
