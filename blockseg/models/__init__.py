"""Networks, their geometry and the checkpoint format."""

from .base import (
    REPRESENTATIONS,
    BlocksegNet,
    Geometry,
    architectures,
    build_model,
    channels_of,
    kinds_of,
    load_checkpoint,
    normalise,
    read_checkpoint,
    register_architecture,
    save_checkpoint,
)
from .identity import IdentityNet
from .tiny import TinyConvNet

__all__ = [
    "REPRESENTATIONS",
    "BlocksegNet",
    "Geometry",
    "IdentityNet",
    "TinyConvNet",
    "architectures",
    "build_model",
    "channels_of",
    "kinds_of",
    "load_checkpoint",
    "normalise",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
]
