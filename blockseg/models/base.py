"""What every blockseg network knows about itself, and the checkpoint format.

A network used by blockseg is a :class:`BlocksegNet`: a ``torch.nn.Module`` that

* maps an image batch ``(N, 1, z, y, x)`` (normalised float32) to raw outputs
  ``(N, C, z', y', x')`` with ``z' = z - 2 * crop[0]`` etc. (``crop = 0`` for "same" padding);
* turns raw outputs into stored values with :meth:`BlocksegNet.postprocess` (sigmoid, softmax,
  tanh or identity per representation, in the order of :attr:`BlocksegNet.channels`);
* reports its :class:`Geometry`: patch sizes it was trained for, the valid-padding crop, and the
  context margin a block halo must provide.

:data:`REPRESENTATIONS` names the channels each representation produces (the names
:mod:`blockseg.io.predictions` stores and :mod:`blockseg.segment.decoders` reads) and their kind
(prob, tanh or raw); the table: ``docs/api/models.md``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BlocksegError
from ..zyx import zyx
from .._version import __version__
from ..io.untrusted import load_plain

#: representation name -> (channel names, value kind)
REPRESENTATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "B": (("B",), "prob"),
    "C": (("C",), "prob"),
    "D": (("D",), "tanh"),
    "cpv": (("cpv_z", "cpv_y", "cpv_x"), "raw"),
    "3label": (("P_bg", "P_boundary", "P_interior"), "prob"),
    "sdt": (("sdt",), "tanh"),
    "aff": (("aff_z", "aff_y", "aff_x", "fg"), "prob"),
    "gauss": (("gauss",), "prob"),
    "density": (("density",), "raw"),
}

#: version of the checkpoint layout written by :func:`save_checkpoint`
CHECKPOINT_FORMAT = 1
CHECKPOINT_MAGIC = "blockseg-checkpoint"


def check_representations(representations: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of representation names; return it as a tuple."""
    reps = tuple(representations)
    unknown = [r for r in reps if r not in REPRESENTATIONS]
    if unknown or not reps or len(set(reps)) != len(reps):
        raise BlocksegError(
            f"representations must be distinct names from {sorted(REPRESENTATIONS)}, got {list(reps)}"
        )
    return reps


def channels_of(representations: Sequence[str]) -> tuple[str, ...]:
    """Prediction channel names of a list of representations, in order."""
    return tuple(c for r in check_representations(representations) for c in REPRESENTATIONS[r][0])


def kinds_of(representations: Sequence[str]) -> dict[str, str]:
    """``{channel: kind}`` of a list of representations (see :mod:`blockseg.io.predictions`)."""
    return {c: REPRESENTATIONS[r][1] for r in check_representations(representations) for c in REPRESENTATIONS[r][0]}


@dataclass(frozen=True)
class Geometry:
    """Spatial contract of a network, all in voxels, axes (z, y, x).

    Attributes
    ----------
    input_patch : tuple of int
        Patch size the network was trained with and is run with by default.
    crop : tuple of int
        Voxels lost per side by valid convolutions: output = input - 2 * crop.
    margin : tuple of int
        Context per side (beyond ``crop``) that a block halo should provide so that core voxels
        see the same context as in a whole-volume run; normally part of the receptive field.
    divisor : tuple of int
        ``input - 2 * crop`` (for same padding: ``input``) must be a multiple of this (pooling).
    """

    input_patch: tuple[int, int, int]
    crop: tuple[int, int, int] = (0, 0, 0)
    margin: tuple[int, int, int] = (0, 0, 0)
    divisor: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, zyx(getattr(self, f.name), f"geometry {f.name}", at_least=0, scalar=False))
        if any(d < 1 for d in self.divisor) or any(p <= 2 * c for p, c in zip(self.input_patch, self.crop)):
            raise BlocksegError(f"invalid geometry {self}")

    @property
    def output_patch(self) -> tuple[int, int, int]:
        """Output size for :attr:`input_patch`."""
        return self.output_for(self.input_patch)

    def output_for(self, input_patch: Sequence[int]) -> tuple[int, int, int]:
        """Output size of an input patch; raises if the patch is not admissible."""
        p = tuple(int(x) for x in input_patch)
        out = tuple(a - 2 * c for a, c in zip(p, self.crop))
        if len(p) != 3 or any(o <= 0 or o % d for o, d in zip(out, self.divisor)):
            raise BlocksegError(
                f"input patch {p} is not admissible: input - 2*crop {out} must be positive multiples of {self.divisor}"
            )
        return out  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(**{k: tuple(v) for k, v in d.items()})


class BlocksegNet(nn.Module):
    """Base class of blockseg networks (see the module docstring).

    Subclasses set :attr:`architecture` (the registry name), store their constructor keyword
    arguments in ``self.config`` (JSON-serialisable, enough to rebuild the network), and
    implement ``forward`` and :attr:`geometry`.
    """

    architecture: ClassVar[str] = ""
    #: whether the network has dropout layers that MC-dropout sampling can switch on
    supports_mc_dropout: ClassVar[bool] = False

    def __init__(self, representations: Sequence[str]):
        super().__init__()
        self.representations = check_representations(representations)
        self.config: dict = {}

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the postprocessed output channels, in order."""
        return channels_of(self.representations)

    @property
    def kinds(self) -> dict[str, str]:
        return kinds_of(self.representations)

    @property
    def geometry(self) -> Geometry:  # pragma: no cover - abstract
        raise NotImplementedError

    def postprocess(self, raw: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Map raw outputs ``(N, C, ...)`` to stored values, one slice per representation.

        B, C, aff, gauss: sigmoid; D, sdt: tanh; 3label: softmax over its 3 channels;
        cpv, density: unchanged. Raw and postprocessed outputs have the same channel count.
        ``inplace=True`` (inference only, never under autograd) overwrites ``raw`` slice by
        slice and returns it: no per-representation copies and no concatenation.
        """
        if inplace:
            i = 0
            for r in self.representations:
                n = len(REPRESENTATIONS[r][0])
                x = raw[:, i : i + n]
                i += n
                if r in ("B", "C", "aff", "gauss"):
                    x.sigmoid_()
                elif r in ("D", "sdt"):
                    x.tanh_()
                elif r == "3label":
                    x.copy_(torch.softmax(x, dim=1))
            if i != raw.shape[1]:
                raise BlocksegError(f"network output has {raw.shape[1]} channels, representations need {i}")
            return raw
        parts, i = [], 0
        for r in self.representations:
            n = len(REPRESENTATIONS[r][0])
            x = raw[:, i : i + n]
            i += n
            if r in ("B", "C", "aff", "gauss"):
                x = torch.sigmoid(x)
            elif r in ("D", "sdt"):
                x = torch.tanh(x)
            elif r == "3label":
                x = torch.softmax(x, dim=1)
            parts.append(x)
        if i != raw.shape[1]:
            raise BlocksegError(f"network output has {raw.shape[1]} channels, representations need {i}")
        return torch.cat(parts, dim=1)

    def set_mc_dropout(self, enabled: bool) -> None:
        """Keep dropout layers active in eval mode (MC-dropout sampling) or not."""
        for m in self.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout3d)):
                m.train(enabled)


_ARCHITECTURES: dict[str, Callable[..., BlocksegNet]] = {}


def register_architecture(cls):
    """Class decorator: make ``cls`` loadable from checkpoints by its ``architecture`` name."""
    if not cls.architecture:
        raise ValueError(f"{cls.__name__} has no architecture name")
    _ARCHITECTURES[cls.architecture] = cls
    return cls


def architectures() -> tuple[str, ...]:
    return tuple(sorted(_ARCHITECTURES))


def build_model(architecture: str, **config) -> BlocksegNet:
    """Instantiate a registered architecture from its config."""
    if architecture not in _ARCHITECTURES:
        raise BlocksegError(f"unknown architecture {architecture!r}; known: {list(architectures())}")
    try:
        return _ARCHITECTURES[architecture](**config)
    except TypeError as e:
        raise BlocksegError(f"bad config for architecture {architecture!r}: {e}") from None


def save_checkpoint(path, model: BlocksegNet, **metadata) -> None:
    """Write weights + everything needed to rebuild and run ``model`` to one file.

    ``metadata`` holds JSON-serialisable extras, e.g. ``normalisation`` (how the image was
    scaled to the network input), ``voxel_size``, ``training`` (config, iterations, losses).
    """

    payload = {
        "magic": CHECKPOINT_MAGIC,
        "format": CHECKPOINT_FORMAT,
        "blockseg_version": __version__,
        "architecture": model.architecture,
        "config": model.config,
        "representations": list(model.representations),
        "geometry": model.geometry.to_dict(),
        "metadata": metadata,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, str(path))


def read_native_checkpoint(path) -> dict:
    """Load and validate a blockseg checkpoint's payload (no network built); any network file:
    :func:`blockseg.models.checkpoint.read_checkpoint`."""
    path = str(path)
    if not os.path.exists(path):
        raise BlocksegError(f"checkpoint {path} does not exist")

    payload = load_plain(path, "blockseg checkpoint")  # tensors and plain data only: nothing in it can run
    if not isinstance(payload, dict) or payload.get("magic") != CHECKPOINT_MAGIC:
        raise BlocksegError(f"{path}: not a blockseg checkpoint")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise BlocksegError(
            f"{path}: checkpoint format {payload.get('format')} is not supported (this blockseg reads format {CHECKPOINT_FORMAT})"
        )
    return payload


def load_native_checkpoint(path, device: str | torch.device = "cpu") -> tuple[BlocksegNet, dict]:
    """Rebuild a network from a blockseg checkpoint; return ``(model in eval mode on device,
    payload)``; any network file: :func:`blockseg.models.checkpoint.load_checkpoint`."""
    payload = read_native_checkpoint(path)
    model = build_model(payload["architecture"], **payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise BlocksegError(f"{path}: weights do not fit architecture {payload['architecture']!r}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), payload


def normalise(image, normalisation: dict | None):
    """Scale raw image values to network input: ``(x - offset) / scale`` as float32.

    ``normalisation`` is the checkpoint's ``metadata["normalisation"]``, ``{"offset": float,
    "scale": float}``, fixed at training time from the training volumes. It is one global
    affine map (never per block or per patch), so blockwise inference equals whole-volume
    inference. ``None`` means identity.
    """
    x = np.asarray(image, dtype=np.float32)
    if not normalisation:
        return x
    if "offset" not in normalisation and "scale" not in normalisation:
        # e.g. the percentile scheme: its affine map depends on the whole volume
        raise BlocksegError(f"normalisation {normalisation.get('scheme', normalisation)!r} needs the whole volume's "
                            "statistics: resolve it with blockseg.predict.normalise first")  # fmt: skip
    offset = np.float32(normalisation.get("offset", 0.0))
    scale = np.float32(normalisation.get("scale", 1.0))
    return (x - offset) / scale
