"""Networks, their geometry and the checkpoint format."""

import os
from importlib.resources import files

from .base import (
    REPRESENTATIONS,
    BlocksegNet,
    Geometry,
    architectures,
    build_model,
    channels_of,
    kinds_of,
    normalise,
    register_architecture,
    save_checkpoint,
)
from .identity import IdentityNet
from .tiny import TinyConvNet
from .plain import JointDetSegNet, ValidUNet3D
from .unet import ResUNet3D
from .foreign import ForeignNet, describe as describe_foreign, is_foreign
from .checkpoint import check_decoder_channels, load_checkpoint, read_checkpoint


from ..checkpoints import SHIPPED_CHECKPOINTS
from ..errors import BlocksegError


def shipped_checkpoint_path(name: str) -> str:
    """Path of a shipped checkpoint by name (:data:`SHIPPED_CHECKPOINTS`).

    ``demo``: residual U-Net (B, C, D, cpv) trained on synthetic NucMM-Z-like EM volumes;
    ``fluo``: residual U-Net (3-label + cpv) trained on a real confocal nuclei crop,
    percentile-normalised, with its voxel size and nucleus diameter; ``fluo_synth``: residual
    U-Net (B, C, D) trained on synthetic fluorescence only (``blockseg synth --preset fluo``)
    (docs/results.md, "The shipped checkpoints").
    """
    if name not in SHIPPED_CHECKPOINTS:
        raise BlocksegError(f"no shipped checkpoint {name!r}; shipped: {sorted(SHIPPED_CHECKPOINTS)}")
    p = files("blockseg") / "checkpoints" / SHIPPED_CHECKPOINTS[name]
    if not p.is_file():
        raise BlocksegError(f"the {name} checkpoint {p} is missing from this installation")
    return str(p)


def resolve_checkpoint(checkpoint) -> str:
    """A checkpoint path, or a shipped checkpoint's name (when no file of that name exists).

    Only a *file* shadows a shipped name: a folder called ``demo`` in the working directory
    (``blockseg demo --run-dir demo`` makes one) does not.
    """
    c = str(checkpoint)
    return shipped_checkpoint_path(c) if c in SHIPPED_CHECKPOINTS and not os.path.isfile(c) else c


def demo_checkpoint_path() -> str:
    """Path of the shipped demo checkpoint (residual U-Net, representations B, C, D, cpv).

    Trained on synthetic NucMM-Z-like EM data by ``configs/train_demo.yaml``; see
    docs/results.md ("The shipped checkpoints") for how it was made and how well it segments.
    """
    return shipped_checkpoint_path("demo")


__all__ = [
    "REPRESENTATIONS",
    "BlocksegNet",
    "Geometry",
    "IdentityNet",
    "TinyConvNet",
    "architectures",
    "build_model",
    "channels_of",
    "check_decoder_channels",
    "demo_checkpoint_path",
    "resolve_checkpoint",
    "shipped_checkpoint_path",
    "ResUNet3D",
    "ValidUNet3D",
    "JointDetSegNet",
    "ForeignNet",
    "describe_foreign",
    "is_foreign",
    "kinds_of",
    "load_checkpoint",
    "normalise",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
]
