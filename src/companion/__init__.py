"""companion: the code behind the book "RL in Name Only?".

Every figure and number in the book comes from this package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("companion")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
