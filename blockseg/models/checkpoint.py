"""Reading any network file blockseg runs: a blockseg checkpoint (:mod:`.base`), or a foreign
network -- TorchScript / ONNX with its sidecar (:mod:`.foreign`), a bioimage.io package
(:mod:`.bioimageio`) -- as the same payload and network interface.
"""

from __future__ import annotations

import os

import torch

from ..errors import BlocksegError
from .base import REPRESENTATIONS, BlocksegNet, channels_of, load_native_checkpoint, read_native_checkpoint
from .foreign import describe, is_foreign, load_foreign


def read_checkpoint(path) -> dict:
    """Load and validate a network file's payload (no network built); a foreign network's is the
    payload :meth:`blockseg.models.foreign.ForeignModel.payload` makes from its sidecar."""
    path = str(path)
    if not os.path.exists(path):
        raise BlocksegError(f"checkpoint {path} does not exist")
    if is_foreign(path):  # a TorchScript / ONNX network with its sidecar (blockseg.models.foreign)
        return describe(path).payload()
    return read_native_checkpoint(path)


def load_checkpoint(path, device: str | torch.device = "cpu") -> tuple[BlocksegNet, dict]:
    """Rebuild a network from a network file; return ``(model in eval mode on device, payload)``.

    A TorchScript or ONNX network with its sidecar loads as a
    :class:`blockseg.models.foreign.ForeignNet`."""
    if is_foreign(path):
        return load_foreign(path, device)
    return load_native_checkpoint(path, device)


def check_decoder_channels(source, decoder) -> None:
    """Refuse a decoder that reads channels a network (or checkpoint) does not produce.

    Parameters
    ----------
    source : BlocksegNet, checkpoint payload dict, checkpoint path, or sequence of channel names
    decoder : blockseg.segment.Decoder (anything with a ``channels`` tuple and a ``name``)

    Raises
    ------
    BlocksegError
        One line naming the missing channels and the representations that would provide them.
    """
    if isinstance(source, BlocksegNet):
        channels = source.channels
    elif isinstance(source, dict):
        channels = channels_of(source["representations"])
    elif isinstance(source, (str, os.PathLike)):
        channels = channels_of(read_checkpoint(source)["representations"])
    else:
        channels = tuple(source)
    missing = [c for c in decoder.channels if c not in channels]
    if missing:
        need = sorted({r for r, (chs, _) in REPRESENTATIONS.items() if set(chs) & set(missing)})
        raise BlocksegError(
            f"decoder {decoder.name!r} needs channel(s) {missing} (representations {need}); "
            f"the network predicts {list(channels)}"
        )
