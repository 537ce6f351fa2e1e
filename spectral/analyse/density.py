"""Spectral densities: a Gaussian KDE of computed eigenvalues, and stochastic Lanczos quadrature.

SLQ estimates the whole eigenvalue distribution of HᵀH / n without computing eigenpairs:
for random probes z, m Lanczos steps on A = G / n give Gauss-quadrature nodes θ_i and
weights τ_i with zᵀ f(A) z ≈ Σ τ_i f(θ_i). The nonzero eigenvalues of HᵀH / n are those of the
n×n matrix G / n = HHᵀ / n; the other d − n are zero, reported as ``zero_mass``. All probes run
in lockstep, so each Lanczos step is one streamed pass over the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg
from scipy.stats import gaussian_kde

from ..errors import SpectralError
from .matrix import TrajectoryMatrix


def eigenvalue_kde(eigenvalues, points: int = 200, bandwidth=None) -> pd.DataFrame:
    """Gaussian KDE of log10(eigenvalue) (the spectrum spans decades), on a log-spaced grid.

    Returns columns ``eigenvalue``, ``density`` (per unit of log10 eigenvalue) and ``bandwidth`` (the
    kernel's standard deviation in log10 units: Scott's rule unless ``bandwidth`` is given, as scipy's
    ``bw_method``).
    """
    lam = np.asarray(eigenvalues, dtype=float)
    lam = lam[lam > 0]
    if len(lam) < 2:
        raise SpectralError("a density needs at least two positive eigenvalues")
    logs = np.log10(lam)
    kde = gaussian_kde(logs, bw_method=bandwidth)
    pad = 3 * kde.factor * logs.std()
    grid = np.linspace(logs.min() - pad, logs.max() + pad, points)
    return pd.DataFrame({"eigenvalue": 10**grid, "density": kde(grid), "bandwidth": kde.factor * logs.std(ddof=1)})


# the authors' settings (rebuttal_plots_neurips_2022.py): top-500 σ_k, variance 1e-6, 300,000 points
AUTHORS_KDE = {"top": 500, "variance": 1e-6, "grid_len": 300_000, "grid_expand": 3e-4}


def authors_density(singular_values, thin: int = 30) -> pd.DataFrame:
    """The authors' density of a spectrum (:func:`linear_kde` with :data:`AUTHORS_KDE` on the top-500
    singular values), every ``thin``-th grid point kept for the file (10,000 of 300,000 points)."""
    top = np.sort(np.asarray(singular_values, dtype=float))[::-1][: AUTHORS_KDE["top"]]
    top = top[np.isfinite(top)]
    settings = {k: v for k, v in AUTHORS_KDE.items() if k != "top"}
    return linear_kde(top, **settings).iloc[::thin].reset_index(drop=True)


def linear_kde(values, variance: float = 1e-6, grid_len: int = 300_000, grid_expand: float = 3e-4) -> pd.DataFrame:
    """The authors' presentation of the spectrum (private-transformers, spectral_analysis/density.py
    ``eigv_to_density`` as called by rebuttal_plots_neurips_2022.py on the top-500 σ_k = √λ_k):
    equal-weight Gaussian kernels in linear space, of variance ``variance · max(1, range)``, on
    ``grid_len`` points from min − ``grid_expand`` to max + ``grid_expand``, normalised to unit area
    on that grid. Returns columns ``value`` and ``density``.
    """
    v = np.asarray(values, dtype=float)
    if len(v) < 1:
        raise SpectralError("a density needs at least one value")
    lo, hi = v.min() - grid_expand, v.max() + grid_expand
    grid = np.linspace(lo, hi, grid_len)
    var = variance * max(1.0, hi - lo)
    density = np.empty(grid_len)
    for start in range(0, grid_len, 20_000):  # 20k x len(v) kernel values at a time
        g = grid[start : start + 20_000, None]
        density[start : start + 20_000] = np.exp(-((g - v) ** 2) / (2 * var)).sum(1) / len(v)
    density /= density.sum() * (grid[1] - grid[0])  # unit area on the grid (the kernels' constant cancels)
    return pd.DataFrame({"value": grid, "density": density})


def lanczos_quadrature(apply, n: int, probes: int = 16, steps: int = 40, seed: int = 0):
    """Gauss-quadrature nodes and weights of the spectral measure of a symmetric operator.

    apply : Q (n, p) -> A Q. Returns (nodes (probes, m), weights (probes, m)); each probe's
    weights sum to 1, so ``weights.mean(0)`` against ``nodes`` estimates the eigenvalue
    distribution (1/n) Σ δ(λ − λ_i).
    """
    rng = np.random.default_rng(seed)
    m = min(steps, n)
    Z = rng.choice([-1.0, 1.0], size=(n, probes))  # Rademacher probes
    Q = np.zeros((m, n, probes))
    alpha, beta = np.zeros((m, probes)), np.zeros((m, probes))
    q = Z / np.linalg.norm(Z, axis=0)
    for j in range(m):
        Q[j] = q
        w = apply(q)
        alpha[j] = np.einsum("ip,ip->p", q, w)
        w -= alpha[j] * q + (beta[j - 1] * Q[j - 1] if j else 0)
        # full reorthogonalisation keeps the nodes from ghost copies
        w -= np.einsum("jp,jip->ip", np.einsum("jip,ip->jp", Q[: j + 1], w), Q[: j + 1])
        beta[j] = np.linalg.norm(w, axis=0)
        q = np.divide(w, beta[j], out=np.zeros_like(w), where=beta[j] > 1e-12)
    nodes, weights = np.zeros((probes, m)), np.zeros((probes, m))
    for p in range(probes):
        # an invariant subspace found early ends that probe's recurrence
        k = next((j + 1 for j in range(m - 1) if beta[j, p] <= 1e-12), m)
        theta, S = scipy.linalg.eigh_tridiagonal(alpha[:k, p], beta[: k - 1, p])
        nodes[p, :k], weights[p, :k] = theta, S[0] ** 2
    return nodes, weights


def slq_density(
    source,
    stream: str = "clipped",
    probes: int = 16,
    steps: int = 40,
    points: int = 200,
    sigma: float | None = None,
    max_memory=None,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Density of the eigenvalues of HᵀH / n by stochastic Lanczos quadrature.

    Returns (DataFrame with ``eigenvalue`` and ``density`` over log10 eigenvalue for the nonzero
    part, info with ``zero_mass`` = (d − n)/d and the raw quadrature ``nodes``/``weights``).
    """
    M = TrajectoryMatrix(source, stream, max_memory=max_memory)
    n = M.n
    nodes, weights = lanczos_quadrature(lambda Q: M.hht(Q) / n, n, probes, steps, seed)
    keep = (weights > 0) & (nodes > 0)
    logs, w = np.log10(nodes[keep]), weights[keep] / probes
    sigma = sigma or max(0.05, 0.1 * logs.std())
    grid = np.linspace(logs.min() - 3 * sigma, logs.max() + 3 * sigma, points)
    density = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - logs[None, :]) / sigma) ** 2)).sum(1) / (
        sigma * np.sqrt(2 * np.pi)
    )
    info = {"zero_mass": max(M.d - n, 0) / M.d, "nodes": nodes, "weights": weights, "passes": M.passes}
    return pd.DataFrame({"eigenvalue": 10**grid, "density": density}), info
