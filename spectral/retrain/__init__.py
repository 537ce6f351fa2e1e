"""Retraining inside a top-r gradient subspace (the paper's subspace experiment)."""

from .coordinates import CoordinateEngine
from .run import MODES, SOURCES, RetrainConfig, retrain
from .subspace import Subspace

__all__ = ["CoordinateEngine", "MODES", "RetrainConfig", "SOURCES", "Subspace", "retrain"]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.api:retrain")  # sp.retrain(...): see spectral.entry
