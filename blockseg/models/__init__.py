"""Networks, their geometry and the checkpoint format."""

from .base import (
    REPRESENTATIONS,
    BlocksegNet,
    Geometry,
    architectures,
    build_model,
    channels_of,
    check_decoder_channels,
    kinds_of,
    load_checkpoint,
    normalise,
    read_checkpoint,
    register_architecture,
    save_checkpoint,
)
from .identity import IdentityNet
from .tiny import TinyConvNet
from .plain import JointDetSegNet, ValidUNet3D
from .unet import ResUNet3D


def demo_checkpoint_path() -> str:
    """Path of the shipped demo checkpoint (residual U-Net, representations B, C, D, cpv).

    Trained on synthetic NucMM-Z-like EM data by ``configs/train_demo.yaml``; see
    the README (`blockseg train`, "The demo checkpoint") for how it was made and how well it segments.
    """
    from importlib.resources import files

    from ..errors import BlocksegError

    p = files("blockseg") / "checkpoints" / "demo_bcd_cpv.pt"
    if not p.is_file():
        raise BlocksegError(f"the demo checkpoint {p} is missing from this installation")
    return str(p)


def resolve_checkpoint(name) -> str:
    """A checkpoint argument as a path: ``demo`` is the shipped demo checkpoint (as in run
    configs); anything else is returned as given."""
    name = str(name)
    return demo_checkpoint_path() if name == "demo" else name


__all__ = [
    "resolve_checkpoint",
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
    "ResUNet3D",
    "ValidUNet3D",
    "JointDetSegNet",
    "kinds_of",
    "load_checkpoint",
    "normalise",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
]
