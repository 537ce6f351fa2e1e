"""What the same steps would show at another batch size, from the run's ``sampling`` stream.

A run stored with ``--streams clipped sampling`` holds, per step, the clipped row h_t = m_t + ε_t (the
mean gradient plus the batch's sampling noise) and the halves' difference Δ_t, with E[Δ_t] = 0 and
E[Δ_t Δ_tᵀ] = D_t, where the row's noise covariance is (1 − q) D_t at the run's batch B̄ and
(B̄/B − q) D_t at batch B (:mod:`spectral.dp.sampling`). So, with f = 1 − B̄/B (B = inf, every example
every step: f = 1 − q), E[h hᵀ at B] = E[h hᵀ at B̄] − f D_t. Two estimators follow:

``steps`` (default)  the n × n Gram matrix the steps would have at B:  K_B = H Hᵀ − f diag(‖Δ_t‖²).
                     E[h_t·h_s at B] = m_t·m_s + δ_ts tr(Cov ε_t at B): the noise enters a trajectory's
                     Gram matrix through its diagonal, so this is unbiased entry by entry, and its
                     eigenvalues are what a trajectory at B shows when the noise of different steps is
                     nearly orthogonal (effective rank of the noise ≫ n: the flat tail of a gradient
                     trajectory, d = 10⁶–10⁸). The predicted rows keep their directions; their noise
                     shrinks. Components are v = Hᵀ u / ‖Hᵀ u‖.
``matrix``           the d × d second moment M_B = HᵀH − f ΔᵀΔ, solved in step space through the Gram
                     matrix of Z = [H; Δ]: with K = Z Zᵀ = Q Λ Qᵀ and S = diag(1ₙ, −f 1ₙ), M_B = ZᵀSZ
                     has the eigenvalues of Λ^½ QᵀSQ Λ^½ = W Θ Wᵀ and eigenvectors v = Zᵀ Q Λ^-½ w.
                     Unbiased for E[HᵀH] as a matrix; but where the noise has high effective rank the
                     rows' noise and Δ's lie in different directions, so M_B keeps the rows' flat tail
                     and adds as many negative eigenvalues: use it where d (or the noise's rank) is
                     below n.

What one run cannot give: the steps' noise also enters the off-diagonal of their Gram matrix (ε_t·ε_s,
zero-mean, of size ‖ε‖²·√(n/r) for noise of effective rank r), which spreads the flat tail's eigenvalues
by about ‖offdiag‖₂ around its level (Marchenko–Pastur). That spread is the run's, at batch B̄; a run at B
has it B̄/B times smaller, and no estimator from one trajectory removes it. Δ's Gram matrix has the same
off-diagonal statistics, so ``resolution`` = f·‖offdiag(Δ Δᵀ)‖₂ (summary.json) says how far below the run's
floor the prediction can resolve: predicted tail eigenvalues within ±resolution of zero are not resolved.

Both are unbiased estimates, not second moments: they can have negative eigenvalues, which are kept and
counted (``negative_eigenvalues`` in summary.json; their singular values are NaN), never clipped.
G_k per step follows from the same matrices (in-sample: ‖h̃_t‖² − Σ_{j≤k} θ_j u_tj²; held-out: the
components of the fit steps, measured on the others), as in :mod:`spectral.analyse.rlc`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.linalg

from ..errors import SpectralError
from . import rlc
from .matrix import NpyRowWriter, TrajectoryMatrix
from .pca import Spectrum

NOISE_STREAM = "sampling"
ESTIMATORS = ("steps", "matrix")


def factor(run_batch: float, batch: float, sample_rate: float) -> float:
    """f in M_B = HᵀH − f ΔᵀΔ: 1 − B̄/B, and 1 − q for B = inf (every example every step)."""
    if not batch > 0:
        raise SpectralError(f"batch size must be positive or inf, got {batch}")
    return 1.0 - sample_rate if math.isinf(batch) else 1.0 - run_batch / batch


def label(batch: float) -> str:
    """``B1000``, ``Binf``: the suffix of the prediction's output directory (``analysis/clipped@B1000``)."""
    return "Binf" if math.isinf(batch) else f"B{batch:g}"


def solve(K: np.ndarray, n: int, f: float, k: int):
    """Top-k eigenpairs of ZᵀSZ from K = ZZᵀ (2n × 2n). Returns (θ (k,), A (2n, k) with v = Zᵀ a,
    all eigenvalues of T (for the count of negative ones))."""
    lam, Q = scipy.linalg.eigh(K)
    keep = lam > lam.max() * len(K) * 10 * np.finfo(float).eps
    if not keep.any():
        raise SpectralError("the trajectory is all zeros (‖[H; Δ]‖ = 0): nothing to predict")
    lam, Q = lam[keep], Q[:, keep]
    root = np.sqrt(lam)
    s = np.r_[np.ones(n), -f * np.ones(n)]
    T = (Q * root).T @ (s[:, None] * (Q * root))
    theta, W = scipy.linalg.eigh((T + T.T) / 2)
    order = np.argsort(theta)[::-1]
    theta, W = theta[order], W[:, order]
    k = min(k, len(theta))
    return theta[:k], (Q / root) @ W[:, :k], theta


def step_energies(K: np.ndarray, n: int, f: float, A: np.ndarray, steps: np.ndarray, basis_idx: np.ndarray):
    """(scores of h_t (len(steps), k), predicted energies per component, predicted ‖h_t‖²) for ``steps``,
    with the components v = Zᵀ a fitted on the rows ``basis_idx`` of Z (A: (len(basis_idx), k))."""
    KH, KD = K[np.ix_(steps, basis_idx)], K[np.ix_(steps + n, basis_idx)]
    SH, SD = KH @ A, KD @ A
    norms = np.diag(K)[steps] - f * np.diag(K)[steps + n]
    return SH, SH**2 - f * SD**2, norms


def resolution(K: np.ndarray, n: int, f: float) -> float:
    """f·‖offdiag(Δ Δᵀ)‖₂: the size of the off-diagonal noise the prediction keeps (module docstring)."""
    off = K[n:, n:] - np.diag(np.diag(K)[n:])
    return float(f * np.abs(np.linalg.eigvalsh(off)).max())


def steps_gram(K: np.ndarray, n: int, f: float) -> np.ndarray:
    """K_B = H Hᵀ − f diag(‖Δ_t‖²) from the Gram matrix K of [H; Δ] (2n × 2n)."""
    return K[:n, :n] - f * np.diag(np.diag(K)[n:])


def steps_solve(G: np.ndarray, k: int):
    """Top-k eigenpairs of a predicted Gram matrix (may be indefinite): (θ (k,), U (n, k), all θ)."""
    theta, U = scipy.linalg.eigh(G)
    order = np.argsort(theta)[::-1]
    theta, U = theta[order], U[:, order]
    return theta[:k], U[:, :k], theta


def steps_curves(G: np.ndarray, theta, U, steps, ks) -> pd.DataFrame:
    """In-sample G_k per step of a predicted Gram matrix G = U Θ Uᵀ: scores u_tj √θ_j, energies θ_j u_tj²."""
    scores = U * np.sqrt(np.abs(theta))
    out = rlc.residual_norms(scores, np.diag(G), ks, energies=U**2 * theta)
    out.index = pd.Index(steps, name="step")
    return out


def curves(K, n, f, A, steps, basis_idx, ks) -> pd.DataFrame:
    """G_k per step (rows ``steps``) at the predicted batch; per-step estimates below zero count as 0."""
    SH, energies, norms = step_energies(K, n, f, A, steps, basis_idx)
    G = rlc.residual_norms(SH, norms, ks, energies=energies)
    G.index = pd.Index(steps, name="step")
    return G


def predict(
    store,
    k: int,
    batch: float,
    *,
    stream="clipped",
    split="half",
    estimator="steps",
    max_memory=None,
    progress=False,
    components_out=None,
    checkpoint=None,
    ops=None,
):
    """The spectrum and G_k curves of ``stream`` predicted at ``batch`` (see the module docstring).

    Returns (Spectrum, in-sample G (step × k), held-out G or None for ``split="none"``, info).
    Two passes over each of the two streams: the Gram matrix of [H; Δ], then the components.
    """
    if estimator not in ESTIMATORS:
        raise SpectralError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    if NOISE_STREAM not in store.streams:
        raise SpectralError(
            f"{store.root} has no {NOISE_STREAM!r} stream: collect with --streams {stream} {NOISE_STREAM} to "
            "predict other batch sizes"
        )
    dp = store.manifest.get("dp", {})
    if dp.get("sampling", "poisson") != "poisson":
        raise SpectralError("batch-size predictions assume Poisson sampling; this run used shuffled batches")
    run_batch, q = float(dp["batch_size"]), float(dp["sample_rate"])
    f = factor(run_batch, batch, q)
    n = store.n_steps
    M = TrajectoryMatrix(store, (stream, NOISE_STREAM), max_memory=max_memory, progress=progress, ops=ops)
    K = M.gram(checkpoint=checkpoint)
    steps = np.arange(n)
    if estimator == "steps":
        G = steps_gram(K, n, f)
        theta, U, all_theta = steps_solve(G, min(k, n))
        # v = Hᵀ u / ‖Hᵀ u‖, ‖Hᵀ u‖² = uᵀ (H Hᵀ) u; as a combination of [H; Δ]'s rows: A = [U / norm; 0]
        scale = 1 / np.sqrt(np.einsum("ij,ij->j", U, K[:n, :n] @ U))
        A = np.r_[U * scale, np.zeros_like(U)]
        scores, norms = K[:n, :n] @ U * scale, np.diag(G)  # h_t·v; the predicted ‖h̃_t‖²
        residuals = np.zeros(len(theta))  # exact eigenpairs of the n × n estimate (float64 eigh)
        G_in = steps_curves(G, theta, U, steps, rlc.k_grid(len(theta)))
    else:
        theta, A, all_theta = solve(K, n, f, k)
        # certificate: M_B v − θ v = Zᵀ r with r = S K a − θ a, so its norm² is rᵀ K r
        s = np.r_[np.ones(n), -f * np.ones(n)]
        R = s[:, None] * (K @ A) - A * theta
        residuals = np.sqrt(np.clip(np.einsum("ij,ij->j", R, K @ R), 0, None)) / np.abs(theta)
        scores, _, norms = step_energies(K, n, f, A, steps, np.arange(2 * n))
        G_in = curves(K, n, f, A, steps, np.arange(2 * n), rlc.k_grid(len(theta)))
    if components_out is not None:
        out = NpyRowWriter(components_out, (M.d, len(theta)), np.float32)
        M.rmatmat(A, out=out, dtype=np.float32)
        V = out.close()
    else:
        V = M.rmatmat(A, dtype=np.float32)
    negative = int((all_theta < 0).sum())
    info = {
        "batch_size": batch if not math.isinf(batch) else "inf",
        "run_batch_size": run_batch,
        "factor": f,
        "estimator": estimator,
        "negative_eigenvalues": negative,
        "min_eigenvalue": float(all_theta.min()),
        "noise_trace_fraction": float(f * np.trace(K[n:, n:]) / np.trace(K[:n, :n])),
        "resolution": resolution(K, n, f),
    }
    spectrum = Spectrum(
        eigenvalues=theta,
        components=V,
        scores=scores,
        row_sq_norms=norms,
        residuals=residuals,
        total_energy=float(norms.sum()),
        method="gram",
        reason=f"predicted at batch {label(batch)[1:]} from the {NOISE_STREAM} stream (run batch {run_batch:g}, "
        f"{estimator} estimator)",
        centered=False,
        passes=M.passes,
        seconds=M.io["pass_seconds"],
        info=info,
    )
    G_out = None
    if split != "none":
        fit, test = rlc.split_rows(n, split)
        if estimator == "steps":
            G_out, _ = rlc.held_out_from_gram(G, min(k, len(fit)), split=split)
        else:
            idx = np.r_[fit, fit + n]
            # K_fit indexes [H_fit; Δ_fit]: its own n is len(fit)
            theta_f, A_f, _ = solve(K[np.ix_(idx, idx)], len(fit), f, min(k, len(fit)))
            G_out = curves(K, n, f, A_f, test, idx, rlc.k_grid(len(theta_f)))
    return spectrum, G_in, G_out, info
