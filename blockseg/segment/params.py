"""Decoder parameters that travel with the data, and where each one came from.

A checkpoint carries the decoder its training recommends, with thresholds tuned on its
validation volume (``metadata.decoder``). ``predict`` copies that recommendation into the
prediction store's attributes (``blockseg.predictions.decoder``), so ``segment`` on the store
starts from the tuned thresholds without being told where the checkpoint is. The layers, last
one winning, parameter by parameter:

1. the decoder class's defaults (``default``);
2. a named preset when one is asked for (``preset nucmm``), *else* the stored recommendation
   when it is for the same decoder (``checkpoint`` in ``blockseg run``, ``store`` in
   ``blockseg segment``);
3. the user's single overrides (``-p`` / ``--set`` on the command line, ``segment.params`` in
   a run config).

:func:`choose_decoder` applies the layers and returns a :class:`DecoderChoice`: the decoder and
the source of every parameter, printed by the CLI and stored in the output's provenance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Mapping

from ..errors import BlocksegError
from ..io.storage import has_scheme
from .decoders import DECODERS, PRESETS, Decoder, make_decoder
from ..io.predictions import read_metadata

#: the decoder used when neither the user nor the data names one
DEFAULT_DECODER = "bcd"


@dataclass(frozen=True)
class DecoderChoice:
    """A decoder with the origin of each of its parameters.

    Attributes
    ----------
    decoder : Decoder
    sources : dict
        Parameter name -> ``"default"``, ``"preset NAME"``, ``"checkpoint"``, ``"store"``,
        ``"user"`` (or the label the caller gave its overrides, e.g. ``"config"``), or
        ``"given"`` for a decoder built by the caller.
    preset : str or None
        The named preset asked for.
    stored : dict or None
        The stored recommendation the parameters were read from (``name``, ``params`` and
        where it came from: ``checkpoint`` path, ``checkpoint_sha256``, ``tuned_on``), when
        it was used.
    """

    decoder: Decoder
    sources: dict = field(default_factory=dict)
    preset: str | None = None
    stored: dict | None = None

    @classmethod
    def given(cls, decoder: Decoder) -> "DecoderChoice":
        """A decoder the caller built itself: every parameter is ``given``."""
        return cls(decoder, {f.name: "given" for f in fields(decoder)})

    def provenance(self) -> dict:
        """Plain data for an output's attributes / a report."""
        return {
            "name": self.decoder.name,
            "params": self.decoder.params(),
            "sources": dict(self.sources),
            "preset": self.preset,
            "stored": self.stored,
        }

    def describe(self) -> str:
        """One line: ``decoder bcd: seed_b=0.95 ... from the store (tuned thresholds of
        checkpoint demo.pt); fg_b=0.8 from the command line``."""
        groups: dict[str, list[str]] = {}
        for name, value in self.decoder.params().items():
            groups.setdefault(self.sources.get(name, "given"), []).append(f"{name}={value:g}")
        parts = [f"{' '.join(items)} {_source_words(src, self.stored)}" for src, items in groups.items()]
        return f"decoder {self.decoder.name}: " + "; ".join(parts)


def _source_words(source: str, stored: dict | None) -> str:
    origin = ""
    if stored and stored.get("from") == "tuned":  # blockseg tune wrote it into the store
        origin = f" (tuned on {stored.get('tuned_on', 'annotated nuclei')})"
    elif stored and stored.get("checkpoint"):
        tuned = " tuned on its " + stored["tuned_on"] + " volume" if stored.get("tuned_on") else ""
        sizes = stored.get("sizes")
        rescaled = (f"; sizes ×{sizes['factor']:.3g} from its voxel grid to this image's" if sizes else "")
        origin = f" (thresholds of checkpoint {os.path.basename(stored['checkpoint'])}{tuned}{rescaled})"
    words = {
        "default": "(the decoder's defaults)",
        "checkpoint": "from the checkpoint" + origin,
        "store": "from the prediction store" + origin,
        "segment.tune": "fitted by the config's segment.tune" + origin,
        "user": "from the command line",
        "config": "from the config's segment.params",
        "given": "(given)",
    }
    if source.startswith("preset "):
        return f"from the preset {source.split(' ', 1)[1]}"
    return words.get(source, f"from {source}")


#: decoder parameters that count voxels (object volumes): in a checkpoint they count voxels of
#: its training grid, so they are rescaled when predictions are resampled to another grid
VOXEL_COUNT_PARAMS = ("min_size", "min_seed_size")


def checkpoint_decoder(
    payload: Mapping, path: str | None = None, digest: str | None = None, size_factor: float | None = None
) -> dict | None:
    """The decoder a checkpoint recommends, as stored with predictions (None when it names none).

    Parameters
    ----------
    payload : mapping
        A checkpoint payload (:func:`blockseg.models.read_checkpoint`).
    path, digest : str, optional
        The checkpoint's path and sha256 prefix, recorded as the origin.
    size_factor : float, optional
        Image voxels per voxel of the checkpoint's grid (``1 / prod(scale factors)`` when
        ``predict`` resampled the image for the network and its outputs back). The
        recommendation's voxel counts (:data:`VOXEL_COUNT_PARAMS`) are multiplied by it and
        rounded, so a size filter keeps the same physical size; the factor and the original
        values are recorded under ``sizes``.

    Returns
    -------
    dict or None
        ``{"name", "params", "from": "checkpoint", "checkpoint", "checkpoint_sha256",
        "tuned_on"}``; the parameters are validated (a broken recommendation raises).
    """
    rec = dict((payload.get("metadata") or {}).get("decoder") or {})
    name = rec.get("name")
    if name is None:
        return None
    if name not in DECODERS:
        where = f"checkpoint {path}" if path else "the checkpoint"
        raise BlocksegError(f"{where} recommends an unknown decoder {name!r}; known: {sorted(DECODERS)}")
    params = make_decoder(name, **dict(rec.get("params") or {})).params()
    given = set(rec.get("params") or {})
    out = {"name": name, "params": {k: v for k, v in params.items() if k in given}, "from": "checkpoint"}
    if size_factor is not None and abs(float(size_factor) - 1.0) > 1e-6:
        before = {k: out["params"][k] for k in VOXEL_COUNT_PARAMS if k in out["params"]}
        if before:
            out["params"].update({k: max(int(v > 0), int(round(v * float(size_factor)))) for k, v in before.items()})
            out["sizes"] = {"factor": float(size_factor), "checkpoint_grid": before}
    if path is not None:
        out["checkpoint"] = os.path.abspath(path) if not has_scheme(path) else str(path)
    if digest is not None:
        out["checkpoint_sha256"] = digest
    if rec.get("tuned_on"):
        out["tuned_on"] = str(rec["tuned_on"])
    return out


def store_decoder(pred_path: str | os.PathLike) -> dict | None:
    """The decoder recommendation a prediction store carries (written by ``predict``), or None."""

    rec = (read_metadata(pred_path) or {}).get("decoder")  # not a group: None (open_predictions says why)
    return dict(rec) if rec else None


def choose_decoder(
    name: str | None = None,
    preset: str | None = None,
    params: Mapping | None = None,
    stored: Mapping | None = None,
    stored_label: str = "store",
    user_label: str = "user",
    use_stored: bool = True,
) -> DecoderChoice:
    """Apply the layers of the module docstring and build the decoder.

    Parameters
    ----------
    name : str, optional
        Decoder name (default: the stored recommendation's, else ``bcd``).
    preset : str, optional
        A named preset (:data:`blockseg.segment.decoders.PRESETS`); replaces the stored
        recommendation.
    params : mapping, optional
        Single overrides, applied last.
    stored : mapping, optional
        A recommendation from :func:`checkpoint_decoder` / :func:`store_decoder`; used when it
        is for decoder ``name`` and ``use_stored``.
    stored_label, user_label : str
        How the sources of the stored and the overriding parameters are recorded.
    use_stored : bool
        False ignores ``stored`` (the decoder's defaults, or the preset).

    Returns
    -------
    DecoderChoice

    Raises
    ------
    BlocksegError
        For an unknown decoder, preset or parameter, or a parameter out of its range.
    """
    stored = dict(stored) if stored and use_stored else None
    name = name or (stored or {}).get("name") or DEFAULT_DECODER
    if name not in DECODERS:
        raise BlocksegError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    cls = DECODERS[name]
    values: dict = {}
    sources = {f.name: "default" for f in fields(cls)}
    if preset is not None:
        make_decoder(name, preset=preset)  # unknown preset / no such decoder in it: one line
        for k, v in PRESETS[preset][name].items():
            values[k], sources[k] = v, f"preset {preset}"
        stored = None
    elif stored is not None and stored.get("name") == name:
        for k, v in dict(stored.get("params") or {}).items():
            if k not in sources:
                raise BlocksegError(f"the {stored_label}'s {name} parameters name an unknown parameter {k!r}")
            values[k], sources[k] = v, stored_label
    else:
        stored = None
    for k, v in dict(params or {}).items():
        values[k] = v
        if k in sources:
            sources[k] = user_label
    return DecoderChoice(make_decoder(name, **values), sources, preset, stored)
