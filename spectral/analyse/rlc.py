"""Restricted-Lipschitz curves: G_k = ‖(I − P_k) g‖ for every stored gradient g.

P_k projects on the top-k principal components. With scores c_t = Vᵀ g_t,
G_k(t)² = ‖g_t‖² − Σ_{j≤k} c_{tj}², so one set of scores gives every k at once, and
mean_t G_k(t)² = (1/n) Σ_{j>k} λ_j for the in-sample (uncentred) components.
The held-out version fits P_k on one part of the trajectory and measures the others.

Everything held-out follows from the n×n Gram matrix G = H Hᵀ of the whole trajectory: the fit
rows' components are V = H_fitᵀ U Σ⁻¹ with (Λ, U) the eigenpairs of G[fit, fit] (centred:
P G[fit, fit] P, whose U ⟂ 1), so the held-out scores are H_test V = G[test, fit] U Σ⁻¹ and the
held-out norms diag(G)[test]. No second solve and no read of H beyond the Gram pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import SpectralError
from .matrix import default_memory, trajectory_matrix
from .pca import Spectrum, choose_method, principal_components
from .solvers import drop_null_directions, gram_eigenpairs

QUANTILES = (0.1, 0.5, 0.9)


def k_grid(k_max: int, points: int = 30) -> np.ndarray:
    """0 (G_0 = ‖g‖, the plain Lipschitz constant), then log-spaced distinct integers 1..k_max."""
    return np.unique(np.r_[0, np.round(np.logspace(0, np.log10(k_max), points)).astype(int)])


def residual_norms(scores: np.ndarray, row_sq_norms: np.ndarray, ks, energies=None) -> pd.DataFrame:
    """G_k for each step (rows) and k (columns); k = 0 is ‖g‖ itself.

    scores: (n, k_max) projections on orthonormal components; row_sq_norms: (n,) ‖g_t‖².
    energies: (n, k_max) each component's share of ‖g_t‖² if not scores² (a predicted trajectory's
        estimates, see :mod:`spectral.analyse.batch`).
    """
    ks = np.asarray(ks, dtype=int)
    if ks.min() < 0 or ks.max() > scores.shape[1]:
        raise SpectralError(f"k values must lie in [0, {scores.shape[1]}]")
    energies = scores**2 if energies is None else energies
    captured = np.concatenate([np.zeros((len(scores), 1)), np.cumsum(energies, axis=1)], axis=1)
    # clip: rounding can make a tiny residual negative
    G = np.sqrt(np.clip(row_sq_norms[:, None] - captured[:, ks], 0, None))
    return pd.DataFrame(G, columns=pd.Index(ks, name="k")).rename_axis("step")


def summarize(G: pd.DataFrame) -> pd.DataFrame:
    """Per k: mean, rms, max and quantiles of G_k over steps."""
    out = pd.DataFrame({"mean": G.mean(), "rms": np.sqrt((G**2).mean()), "max": G.max()})
    for q in QUANTILES:
        out[f"q{int(q * 100)}"] = G.quantile(q)
    return out.rename_axis("k").reset_index()


def in_sample_from_gram(G: np.ndarray, k: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """``(eigenvalues, in-sample G_k summary)`` of the trajectory whose (n, n) Gram matrix is ``G``: its top-k
    components (default k = n) fitted on all its steps, G_k at :func:`k_grid` (k), eigenvalues descending.
    No pass over the rows: ‖(I − P_k) h_t‖² = ‖h_t‖² − Σ_{j≤k} λ_j U_tj²."""
    k = len(G) if k is None else k
    lam, U = np.linalg.eigh(G)
    lam, U = lam[::-1][:k], U[:, ::-1][:, :k]
    scores = U * np.sqrt(np.clip(lam, 0, None))
    return lam, summarize(residual_norms(scores, np.diag(G).copy(), k_grid(k)))


def in_sample(spectrum: Spectrum, ks=None) -> pd.DataFrame:
    """G_k (step × k) of the gradients the components were fitted on."""
    ks = k_grid(spectrum.k) if ks is None else ks
    return residual_norms(np.asarray(spectrum.scores), spectrum.row_sq_norms, ks)


def in_sample_readable(n: int) -> int:
    """The last k at which an in-sample curve over n steps says something about decay: n // 2.
    Components fitted on the same n steps explain them exactly at k = n, so G_k -> 0 there (to 1e-10)
    is overfitting, not decay; fits and figures read the in-sample curve up to here."""
    return n // 2


def split_rows(n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): ``half`` = first half / second half; ``alternate`` = even / odd steps."""
    idx = np.arange(n)
    if split == "half":
        return idx[: n // 2], idx[n // 2 :]
    if split == "alternate":
        return idx[::2], idx[1::2]
    raise SpectralError(f"unknown split {split!r}; choose half or alternate")


def held_out_from_gram(
    G: np.ndarray, k: int, *, split: str = "half", centered: bool = False, ks=None
) -> tuple[pd.DataFrame, Spectrum]:
    """G_k of held-out steps under components fitted on the other steps, from the Gram matrix
    G = H Hᵀ (n, n) alone (see the module docstring).

    Returns (G (held-out step × k), the fit rows' spectrum without components: eigenvalues,
    scores and norms of the fit rows, enough for their in-sample curve).
    """
    fit, test = split_rows(len(G), split)
    G_fit = G[np.ix_(fit, fit)]
    lam, U, _, trace = gram_eigenpairs(G_fit, min(k, len(fit) - (1 if centered else 0)), centered)
    lam, U, info = drop_null_directions(lam, U, trace, len(fit), {})
    sigma = np.sqrt(np.clip(lam, 0, None))
    W = U / sigma
    scores = G[np.ix_(test, fit)] @ W
    ks = k_grid(len(lam)) if ks is None else np.asarray(ks)[np.asarray(ks) <= len(lam)]  # rank may be < k
    out = residual_norms(scores, np.diag(G)[test], ks)
    out.index = pd.Index(test, name="step")
    fitted = Spectrum(
        eigenvalues=lam,
        components=None,
        scores=G_fit @ W,
        row_sq_norms=np.diag(G_fit).copy(),
        residuals=np.zeros(len(lam)),  # exact eigenpairs of G[fit, fit] (float64 eigh)
        total_energy=trace,
        method="gram",
        reason="held-out fit from the Gram matrix",
        centered=centered,
        passes=0,
        seconds=0.0,
        info=info,
    )
    return out, fitted


def held_out(source, k: int, *, stream="clipped", split="half", ks=None, **pca_kwargs) -> tuple[pd.DataFrame, Spectrum]:
    """G_k of held-out steps under components fitted on the other steps.

    With the exact Gram method (``auto`` picks it when n² fits) this is one pass for the Gram
    matrix and :func:`held_out_from_gram`; otherwise a solve on the fit rows and two passes over
    the held-out rows. Returns (G (held-out step × k), the fitted spectrum).
    """
    n = source.shape[0] if isinstance(source, np.ndarray) else source.n_steps
    method = pca_kwargs.get("method", "auto")
    if method == "auto":
        d = source.shape[1] if isinstance(source, np.ndarray) else source.d
        method, _ = choose_method(n, d, k, pca_kwargs.get("max_memory") or default_memory())
    matrix = dict(
        max_memory=pca_kwargs.get("max_memory"), client=pca_kwargs.get("client"), device=pca_kwargs.get("device")
    )
    if method == "gram":
        G = trajectory_matrix(source, stream, **matrix).gram()
        return held_out_from_gram(G, k, split=split, centered=pca_kwargs.get("centered", False), ks=ks)
    fit, test = split_rows(n, split)
    spectrum = principal_components(source, k, stream=stream, rows=fit, **pca_kwargs)
    M = trajectory_matrix(source, stream, rows=test, **matrix)
    scores = M.matmat(spectrum.components)
    sq, _ = M.norms()
    ks = k_grid(spectrum.k) if ks is None else np.asarray(ks)[np.asarray(ks) <= spectrum.k]  # rank may be < k
    G = residual_norms(scores, sq, ks)
    G.index = pd.Index(test, name="step")
    return G, spectrum
