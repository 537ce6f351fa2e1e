"""Restricted-Lipschitz curves: G_k = ‖(I − P_k) g‖ for every stored gradient g.

P_k projects on the top-k principal components. With scores c_t = Vᵀ g_t,
G_k(t)² = ‖g_t‖² − Σ_{j≤k} c_{tj}², so one set of scores gives every k at once, and
mean_t G_k(t)² = (1/n) Σ_{j>k} λ_j for the in-sample (uncentred) components.
The held-out version fits P_k on one part of the trajectory and measures the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import SpectralError
from .matrix import trajectory_matrix
from .pca import Spectrum, principal_components

QUANTILES = (0.1, 0.5, 0.9)


def k_grid(k_max: int, points: int = 30) -> np.ndarray:
    """0 (G_0 = ‖g‖, the plain Lipschitz constant), then log-spaced distinct integers 1..k_max."""
    return np.unique(np.r_[0, np.round(np.logspace(0, np.log10(k_max), points)).astype(int)])


def residual_norms(scores: np.ndarray, row_sq_norms: np.ndarray, ks) -> pd.DataFrame:
    """G_k for each step (rows) and k (columns); k = 0 is ‖g‖ itself.

    scores: (n, k_max) projections on orthonormal components; row_sq_norms: (n,) ‖g_t‖².
    """
    ks = np.asarray(ks, dtype=int)
    if ks.min() < 0 or ks.max() > scores.shape[1]:
        raise SpectralError(f"k values must lie in [0, {scores.shape[1]}]")
    captured = np.concatenate([np.zeros((len(scores), 1)), np.cumsum(scores**2, axis=1)], axis=1)
    # clip: rounding can make a tiny residual negative
    G = np.sqrt(np.clip(row_sq_norms[:, None] - captured[:, ks], 0, None))
    return pd.DataFrame(G, columns=pd.Index(ks, name="k")).rename_axis("step")


def summarize(G: pd.DataFrame) -> pd.DataFrame:
    """Per k: mean, rms, max and quantiles of G_k over steps."""
    out = pd.DataFrame({"mean": G.mean(), "rms": np.sqrt((G**2).mean()), "max": G.max()})
    for q in QUANTILES:
        out[f"q{int(q * 100)}"] = G.quantile(q)
    return out.rename_axis("k").reset_index()


def in_sample(spectrum: Spectrum, ks=None) -> pd.DataFrame:
    """G_k (step × k) of the gradients the components were fitted on."""
    ks = k_grid(spectrum.k) if ks is None else ks
    return residual_norms(np.asarray(spectrum.scores), spectrum.row_sq_norms, ks)


def split_rows(n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): ``half`` = first half / second half; ``alternate`` = even / odd steps."""
    idx = np.arange(n)
    if split == "half":
        return idx[: n // 2], idx[n // 2 :]
    if split == "alternate":
        return idx[::2], idx[1::2]
    raise SpectralError(f"unknown split {split!r}; choose half or alternate")


def held_out(source, k: int, *, stream="clipped", split="half", ks=None, **pca_kwargs) -> tuple[pd.DataFrame, Spectrum]:
    """G_k of held-out steps under components fitted on the other steps.

    Returns (G (held-out step × k), the fitted spectrum).
    """
    n = source.shape[0] if isinstance(source, np.ndarray) else source.n_steps
    fit, test = split_rows(n, split)
    spectrum = principal_components(source, k, stream=stream, rows=fit, **pca_kwargs)
    M = trajectory_matrix(
        source,
        stream,
        rows=test,
        max_memory=pca_kwargs.get("max_memory"),
        client=pca_kwargs.get("client"),
        device=pca_kwargs.get("device"),
    )
    scores = M.matmat(spectrum.components)
    sq, _ = M.norms()
    ks = k_grid(spectrum.k) if ks is None else np.asarray(ks)[np.asarray(ks) <= spectrum.k]  # rank may be < k
    G = residual_norms(scores, sq, ks)
    G.index = pd.Index(test, name="step")
    return G, spectrum
