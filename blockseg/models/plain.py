"""The auxiliary-task paper's plain 3D U-Net (valid padding) and the joint detection network.

:class:`ValidUNet3D` -- 3 down-samplings (4 levels), ``fmaps * factor**level`` channels
(default 10 x 4: 10 / 40 / 160 / 640), two 3x3x3 ReLU convolutions per level with **valid**
padding, 2x2x2 max-pooling, up-sampling by nearest-neighbour repetition followed by a 1x1x1
convolution ("resize conv"), crop-and-concatenate skips, a final 1x1x1 convolution.

Valid convolutions shrink the output: for L = 3, ``crop = 46`` and ``divisor = 8`` (admissible
inputs ``92 + 8 k``, e.g. 236 -> 144); the arithmetic: ``docs/api/models.md``.

:class:`JointDetSegNet` -- the joint detection + segmentation network: a residual U-Net
(:class:`~blockseg.models.unet.ResUNet3D`) predicts the segmentation representation (``B`` or
``3label``); its post-processed output concatenated with the image feeds a detection head of
three 3x3x3 convolutions (with Dropout3d before the 2nd and 3rd) that regresses the ``density``
map (Gaussians of sigma = 1 um at nucleus centres). Dropout layers also sit in the U-Net's
bottleneck, so ``set_mc_dropout(True)`` in eval mode gives MC-dropout samples of both outputs
(per-detection uncertainty from the spread of repeated predictions).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BlocksegError
from .base import REPRESENTATIONS, BlocksegNet, Geometry, register_architecture
from .unet import ResUNet3D


def valid_unet_crop(levels: int) -> tuple[int, int]:
    """``(crop per side, divisor)`` of a valid U-Net with ``levels`` down-samplings.

    The raw crop is ``sum`` over the encoder (2 convs of 1 voxel at scale 2**l, l = 0..L) and
    decoder (2 convs at scale 2**l, l = 0..L-1); outputs of admissible inputs are
    ``2**L * b - 4 * (2**L - 1)``, so we drop ``(4 * (2**L - 1)) % 2**L / 2`` more per side to
    make the output a multiple of ``2**L``.
    """
    s = 2**levels
    raw = 2 * (2 * s - 1) + 2 * (s - 1)  # per side
    extra = ((4 * (s - 1)) % s) // 2
    return raw + extra, s


class _ConvPair(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv3d(cin, cout, 3), nn.ReLU(inplace=True), nn.Conv3d(cout, cout, 3), nn.ReLU(inplace=True))


def _crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    off = [(a - b) // 2 for a, b in zip(x.shape[-3:], shape)]
    return x[..., off[0] : off[0] + shape[0], off[1] : off[1] + shape[1], off[2] : off[2] + shape[2]]


@register_architecture
class ValidUNet3D(BlocksegNet):
    """Plain 3D U-Net with valid padding (auxiliary-task paper, Kainmueller lab, MIDL 2020).

    Parameters
    ----------
    representations : sequence of str
        e.g. ``["3label", "cpv"]``, ``["sdt", "cpv"]``, ``["aff", "cpv"]``, ``["gauss"]``.
    fmaps : int
        Channels at level 0 (paper: 10).
    factor : int
        Channel multiplier per level (paper: 4).
    levels : int
        Number of down-samplings (paper: 3).
    in_channels : int
    input_patch : sequence of int
        Default patch; must be admissible (``92 + 8 k`` per axis for 3 levels).
    """

    architecture = "valid_unet3d"

    def __init__(
        self,
        representations: Sequence[str] = ("3label", "cpv"),
        fmaps: int = 10,
        factor: int = 4,
        levels: int = 3,
        in_channels: int = 1,
        input_patch: Sequence[int] = (132, 132, 132),
    ):
        super().__init__(representations)
        if levels < 1 or fmaps < 1 or factor < 1:
            raise BlocksegError("levels, fmaps and factor must be positive")
        self.config = {
            "representations": list(self.representations),
            "fmaps": int(fmaps),
            "factor": int(factor),
            "levels": int(levels),
            "in_channels": int(in_channels),
            "input_patch": [int(p) for p in input_patch],
        }
        w = [fmaps * factor**i for i in range(levels + 1)]
        self.enc = nn.ModuleList(_ConvPair(in_channels if i == 0 else w[i - 1], w[i]) for i in range(levels + 1))
        self.up = nn.ModuleList(nn.Conv3d(w[i + 1], w[i], 1) for i in range(levels))
        self.dec = nn.ModuleList(_ConvPair(2 * w[i], w[i]) for i in range(levels))
        n_out = sum(len(REPRESENTATIONS[r][0]) for r in self.representations)
        self.head = nn.Conv3d(w[0], n_out, 1)
        crop, div = valid_unet_crop(levels)
        self._extra = crop - (2 * (2 * 2**levels - 1) + 2 * (2**levels - 1))
        self._geometry = Geometry(tuple(input_patch), (crop,) * 3, (0, 0, 0), (div,) * 3)
        self._geometry.output_for(self._geometry.input_patch)

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._geometry.output_for(x.shape[-3:])  # refuse inadmissible inputs with a clear message
        skips = []
        for i, enc in enumerate(self.enc):
            if i > 0:
                x = F.max_pool3d(x, 2)
            x = enc(x)
            skips.append(x)
        for i in range(len(self.dec) - 1, -1, -1):
            x = self.up[i](F.interpolate(x, scale_factor=2, mode="nearest"))
            x = self.dec[i](torch.cat([_crop_to(skips[i], x.shape[-3:]), x], dim=1))
        x = self.head(x)
        e = self._extra
        return x[..., e : x.shape[-3] - e, e : x.shape[-2] - e, e : x.shape[-1] - e] if e else x


@register_architecture
class JointDetSegNet(BlocksegNet):
    """Segmentation U-Net + 3-layer detection head on [segmentation, image] (density map).

    Parameters
    ----------
    representations : sequence of str
        Exactly one segmentation representation (``"B"`` or ``"3label"``) and ``"density"``,
        e.g. ``["3label", "density"]``.
    widths, anisotropic, input_patch, norm :
        Of the segmentation :class:`~blockseg.models.unet.ResUNet3D`.
    head_width : int
        Channels of the detection head's hidden layers.
    dropout : float
        Dropout3d probability (U-Net bottleneck and detection head); MC-dropout samples need
        it > 0.
    """

    architecture = "joint_detseg"
    supports_mc_dropout = True

    def __init__(
        self,
        representations: Sequence[str] = ("3label", "density"),
        widths: Sequence[int] = (16, 32, 64),
        anisotropic: int = 0,
        input_patch: Sequence[int] = (32, 64, 64),
        norm: str = "batch",
        head_width: int = 16,
        dropout: float = 0.2,
    ):
        super().__init__(representations)
        seg = [r for r in self.representations if r != "density"]
        if "density" not in self.representations or len(seg) != 1 or seg[0] not in ("B", "3label"):
            raise BlocksegError(f"joint_detseg needs representations [B or 3label, density], got {list(self.representations)}")
        if self.representations[-1] != "density":
            raise BlocksegError("joint_detseg: list the segmentation representation first, then density")
        self.config = {
            "representations": list(self.representations),
            "widths": [int(w) for w in widths],
            "anisotropic": int(anisotropic),
            "input_patch": [int(p) for p in input_patch],
            "norm": norm,
            "head_width": int(head_width),
            "dropout": float(dropout),
        }
        self.seg = ResUNet3D(seg, widths, anisotropic, input_patch=input_patch, norm=norm, dropout=dropout)
        n_seg = len(REPRESENTATIONS[seg[0]][0])
        self.det = nn.Sequential(
            nn.Conv3d(n_seg + 1, head_width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            nn.Conv3d(head_width, head_width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            nn.Conv3d(head_width, 1, 3, padding=1),
        )
        g = self.seg.geometry
        self._geometry = Geometry(g.input_patch, (0, 0, 0), tuple(m + 3 for m in g.margin), g.divisor)

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg_raw = self.seg(x)
        seg = self.seg.postprocess(seg_raw)
        density = self.det(torch.cat([seg, x[:, :1]], dim=1))
        return torch.cat([seg_raw, density], dim=1)
