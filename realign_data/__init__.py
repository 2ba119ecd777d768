"""realign: ReAlign preference-pair datasets, training and evaluation for small language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("realign-toolkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
