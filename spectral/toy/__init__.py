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
