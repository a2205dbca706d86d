"""A representative small residual 3-D U-Net for the predict benchmark (registered as "bench_resunet").

Three levels (widths 16, 32, 64), two residual 3x3x3 blocks per level with GroupNorm + ELU,
strided-conv downsampling, transposed-conv upsampling, same padding: ~0.5 M parameters, the
shape of the NucMM/PyTC networks at a size a 2-core CPU can benchmark. It lives outside the
library; workers import this module so checkpoints of it load there.
"""

from __future__ import annotations

import torch
from torch import nn

from blockseg.models.base import BlocksegNet, Geometry, register_architecture


class _Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.n1 = nn.GroupNorm(4, cout)
        self.c2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.n2 = nn.GroupNorm(4, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.ELU()

    def forward(self, x):
        y = self.act(self.n1(self.c1(x)))
        return self.act(self.n2(self.c2(y)) + self.skip(x))


@register_architecture
class BenchResUNet(BlocksegNet):
    architecture = "bench_resunet"

    def __init__(self, representations=("B", "C", "D"), widths=(16, 32, 64), input_patch=(64, 64, 64), seed=0):
        super().__init__(representations)
        self.config = {"representations": list(self.representations), "widths": list(widths),
                       "input_patch": list(input_patch), "seed": seed}  # fmt: skip
        torch.manual_seed(seed)
        w1, w2, w3 = widths
        self.enc1, self.down1 = _Res(1, w1), nn.Conv3d(w1, w2, 2, stride=2)
        self.enc2, self.down2 = _Res(w2, w2), nn.Conv3d(w2, w3, 2, stride=2)
        self.mid = _Res(w3, w3)
        self.up2, self.dec2 = nn.ConvTranspose3d(w3, w2, 2, stride=2), _Res(2 * w2, w2)
        self.up1, self.dec1 = nn.ConvTranspose3d(w2, w1, 2, stride=2), _Res(2 * w1, w1)
        self.head = nn.Conv3d(w1, len(self.channels), 1)
        self._geometry = Geometry(tuple(input_patch), (0, 0, 0), (0, 0, 0), (4, 4, 4))  # no margin: as MONAI

    @property
    def geometry(self):
        return self._geometry

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)
