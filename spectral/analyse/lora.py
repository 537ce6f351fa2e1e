"""LoRA's implicit noise (Malekmohammadi & Farnadi 2024, arXiv 2409.17538), measured on stored gradients.

With W = W0 + B A, A (r, n_in) random and frozen with entries N(0, 1/r), one gradient step on B moves W
by −lr · ∇W AᵀA. Since E[AᵀA] = I, this is full gradient descent plus the perturbation
D = ∇W (AᵀA − I). For Gaussian A its entries have mean 0 and, over the draw of A,

    Var(D_ij) = (‖∇W_i‖² + ∇W_ij²) / r          (∇W_i: row i of the gradient)

(AᵀA = ZᵀZ / r with Z standard normal; the (k, j) entries of ZᵀZ/r − I are uncorrelated across k,
with variance (1 + δ_kj)/r). So the perturbation shrinks like 1/r and behaves like noise whose scale
follows the gradient itself — the sense in which LoRA resembles DP-SGD with a fixed noise scale.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..errors import SpectralError


def deviation_variance(G: np.ndarray, r: int) -> np.ndarray:
    """The predicted Var(D_ij) = (‖G_i‖² + G_ij²) / r for a gradient matrix G (n_out, n_in)."""
    if r < 1:
        raise SpectralError(f"the LoRA rank must be >= 1, got {r}")
    G = np.asarray(G, dtype=np.float64)
    return ((G**2).sum(axis=1, keepdims=True) + G**2) / r


def random_a(r: int, n_in: int, rng) -> np.ndarray:
    """A (r, n_in) with entries N(0, 1/r), so that E[AᵀA] = I."""
    return rng.standard_normal((r, n_in)) / np.sqrt(r)


def deviation(G: np.ndarray, A: np.ndarray) -> np.ndarray:
    """D = G (AᵀA − I) (n_out, n_in), computed as (G Aᵀ) A − G without forming AᵀA."""
    G = np.asarray(G, dtype=np.float64)
    return (G @ A.T) @ A - G


def gaussianity(D: np.ndarray, variance: np.ndarray) -> dict:
    """How Gaussian the standardised deviation D / √Var is: Kolmogorov–Smirnov distance to N(0, 1),
    excess kurtosis, and the overlap of its histogram with the N(0, 1) density (1 = identical)."""
    z = (D / np.sqrt(variance)).ravel()
    ks = stats.kstest(z, "norm")
    edges = np.linspace(-5, 5, 101)
    hist, _ = np.histogram(z, bins=edges, density=True)
    ref = np.diff(stats.norm.cdf(edges)) / np.diff(edges)
    overlap = float(np.minimum(hist, ref).sum() * np.diff(edges)[0])
    return {
        "ks_statistic": float(ks.statistic),
        "excess_kurtosis": float(stats.kurtosis(z)),
        "histogram_overlap": overlap,
        "std": float(z.std()),
    }


def equivalent_noise_multiplier(variance: np.ndarray, max_grad_norm: float, batch_size: float) -> float:
    """The σ of DP-SGD whose per-coordinate noise on the mean gradient, σ·C/B, has the same RMS as
    LoRA's perturbation of the mean gradient."""
    return float(np.sqrt(np.mean(variance)) * batch_size / max_grad_norm)
