"""The sidecar of a foreign network: a YAML / JSON file beside the weights (``net.pt`` +
``net.yaml``) naming its outputs, patch, margin and normalisation. Read by
:mod:`.foreign` (TorchScript / ONNX networks) and :mod:`.bioimageio` (a sidecar beside a package).
"""

from __future__ import annotations

import json
import os

import yaml

from ..errors import BlocksegError

#: suffixes of a sidecar beside the weights (same stem)
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")

#: sidecar keys blockseg reads
KNOWN_KEYS = {"outputs", "activation", "patch", "margin", "crop", "halo", "divisor", "normalisation", "normalization",
              "voxel_size", "nucleus_diameter_um", "decoder", "weights", "format", "name", "description"}  # fmt: skip


def find_sidecar(weights: str) -> str | None:
    """The sidecar beside ``weights`` (same stem, any of :data:`SIDECAR_SUFFIXES`), or None."""
    stem = os.path.splitext(weights)[0]
    for s in SIDECAR_SUFFIXES:
        if os.path.isfile(stem + s):
            return stem + s
    return None


def read_sidecar(path: str) -> dict:
    """A sidecar's keys; one-line :class:`BlocksegError` for an unreadable file or an unknown key."""
    try:
        with open(path) as f:
            text = f.read()
        if path.lower().endswith(".json"):
            spec = json.loads(text)
        else:
            spec = yaml.safe_load(text)
    except (OSError, ValueError) as e:
        raise BlocksegError(f"{path}: cannot read the sidecar ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except Exception as e:  # yaml.YAMLError
        raise BlocksegError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise BlocksegError(f"{path}: the sidecar must be a mapping of keys (outputs, patch, margin, normalisation...)")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise BlocksegError(f"{path}: unknown sidecar key(s) {unknown}; known: {sorted(KNOWN_KEYS - {'normalization'})}")
    return spec
