"""A parameter-free network for testing the inference engine."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import BlocksegNet, Geometry, register_architecture


@register_architecture
class IdentityNet(BlocksegNet):
    """Copies (a centre crop of) its input to every output channel.

    With ``representations=("cpv",)`` (a "raw" kind) the postprocessed output is exactly the
    input, so a blockwise prediction must reproduce the image. ``crop`` emulates a valid-padding
    network whose output is smaller than its input; ``margin`` asks for extra halo.
    """

    architecture = "identity"

    def __init__(
        self,
        representations: Sequence[str] = ("cpv",),
        input_patch: Sequence[int] = (16, 32, 32),
        crop: Sequence[int] = (0, 0, 0),
        margin: Sequence[int] = (0, 0, 0),
    ):
        super().__init__(representations)
        self._geometry = Geometry(tuple(input_patch), tuple(crop), tuple(margin))
        self.config = {
            "representations": list(self.representations),
            "input_patch": list(input_patch),
            "crop": list(crop),
            "margin": list(margin),
        }
        self.register_buffer("_anchor", torch.zeros(()))  # gives the model a device

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cz, cy, cx = self._geometry.crop
        z, y, w = x.shape[-3:]
        x = x[..., cz : z - cz, cy : y - cy, cx : w - cx]
        return x[:, :1].expand(-1, len(self.channels), -1, -1, -1) + self._anchor
