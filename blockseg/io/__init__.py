"""Volumes on disk: formats, chunks, output safety, storage, pyramids, export, prediction stores.

:mod:`.volume` opens and creates (z, y, x) volumes of every supported format; its public names are
re-exported here (``from blockseg.io import open_volume``).
"""

from .volume import DEFAULT_CHUNKS, Volume, create_label_volume, create_volume, import_volume, open_volume

__all__ = ["DEFAULT_CHUNKS", "Volume", "create_label_volume", "create_volume", "import_volume", "open_volume"]
