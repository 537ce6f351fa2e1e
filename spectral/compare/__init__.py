"""Principal angles between two runs' (or two streams') top-k subspaces: :func:`compare`."""

from .run import compare, draw

__all__ = ["compare", "draw"]
