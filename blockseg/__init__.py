"""blockseg: blockwise, seamless 3D nuclei segmentation of larger-than-memory volumes on Dask."""

from importlib.metadata import PackageNotFoundError, version

from .errors import BlocksegError
from .grid import Block, BlockGrid, Interface
from .io import Volume, create_label_volume, create_volume, import_volume, open_volume

try:
    __version__ = version("blockseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Block",
    "BlockGrid",
    "BlocksegError",
    "Interface",
    "Volume",
    "__version__",
    "create_label_volume",
    "create_volume",
    "import_volume",
    "open_volume",
]
