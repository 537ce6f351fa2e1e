"""The paper's convex toy: private geometric median under different coefficient decays."""

from .geomedian import MODES, ToyData, coefficients, gradient, loss, noise_multiplier, step_privacy
from .grid import ToyConfig, ToyResults, run_grid, toy

__all__ = [
    "MODES",
    "ToyConfig",
    "ToyData",
    "ToyResults",
    "coefficients",
    "gradient",
    "loss",
    "noise_multiplier",
    "run_grid",
    "step_privacy",
    "toy",
]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.api:toy")  # sp.toy(...): see spectral.entry
