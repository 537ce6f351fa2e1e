"""Principal angles between two runs' (or two streams') top-k subspaces: :func:`compare`."""

from .run import compare, draw

__all__ = ["compare", "draw"]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.compare.run:compare")  # sp.compare(...): see spectral.entry
