"""The installed blockseg's version: the lowest module, so that any module may stamp it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blockseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
