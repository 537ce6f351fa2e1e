"""What the same steps would show at another batch size, from the run's ``sampling`` stream.

A run stored with ``--streams clipped sampling`` holds, per step, the clipped row h_t = m_t + ε_t (the
mean gradient plus the batch's sampling noise) and the halves' difference Δ_t, with E[Δ_t] = 0 and
E[Δ_t Δ_tᵀ] = D_t, where the row's noise covariance is (1 − q) D_t at the run's batch B̄ and
(B̄/B − q) D_t at batch B (:mod:`spectral.dp.sampling`). The two halves' own means are h_t ± Δ_t: the
same trajectory at batch B̄/2, for free. Three estimators, with f = 1 − B̄/B (B = inf: f = 1 − q):

``halves`` (default)  per rank, linear in 1/B through the run's batch and its half batch:
                     λ_k(B) = λ_k(B̄) − f·[λ_k(B̄/2) − λ_k(B̄)], with λ_k(B̄/2) the mean of the k-th
                     eigenvalues of the two half-batch trajectories' Gram matrices (H ± Δ)(H ± Δ)ᵀ. Each
                     rank's eigenvalue is a real trajectory's, so the noise's shape (concentrated or
                     flat, its off-diagonal terms included) is measured, not assumed; what is assumed is
                     that each rank's eigenvalue moves linearly in 1/B, exact for rows that are pure
                     noise. Validated on probe ladders (``collect --probe-batches``: fit 128…512, predict
                     1000; ``experiments/batch_study.py``, paper_repro.md). The predicted Gram matrix is
                     U diag(λ(B)) Uᵀ with U the run's own eigenvectors, so the components are the run's.
``steps``            H Hᵀ − f diag(‖Δ_t‖²): unbiased entry by entry, but it removes the noise from the
                     diagonal only, which is right when the noise of different steps is nearly orthogonal
                     (effective rank ≫ n). Where the noise is concentrated (gradients of a fine-tuning
                     run: rows that are pure synthetic noise of low effective rank give 218 negative
                     eigenvalues of 250) its correction shifts every eigenvalue by about f·mean‖Δ‖²:
                     known to fail there, kept for comparison only.
``matrix``           the d × d second moment M_B = HᵀH − f ΔᵀΔ, solved in step space through the Gram
                     matrix of Z = [H; Δ]: with K = Z Zᵀ = Q Λ Qᵀ and S = diag(1ₙ, −f 1ₙ), M_B = ZᵀSZ
                     has the eigenvalues of Λ^½ QᵀSQ Λ^½ = W Θ Wᵀ and eigenvectors v = Zᵀ Q Λ^-½ w.
                     Unbiased for E[HᵀH] as a matrix; but where the noise has high effective rank the
                     rows' noise and Δ's lie in different directions, so M_B keeps the rows' flat tail
                     and adds as many negative eigenvalues: use it where d (or the noise's rank) is
                     below n.

``resolution`` = f·‖offdiag(Δ Δᵀ)‖₂ (summary.json) is the size of the off-diagonal noise the ``steps``
and ``matrix`` estimators keep. All estimates can have negative eigenvalues, which are kept and counted
(``negative_eigenvalues`` in summary.json; their singular values are NaN), never clipped. G_k per step
follows from the same matrices (in-sample: ‖h̃_t‖² − Σ_{j≤k} θ_j u_tj²; held-out: the components of the
fit steps, measured on the others), as in :mod:`spectral.analyse.rlc`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.linalg

from ..errors import SpectralError
from ..layout import probe_sizes, probe_stream
from . import rlc
from .matrix import NpyRowWriter, TrajectoryMatrix
from .pca import Spectrum

NOISE_STREAM = "sampling"
ESTIMATORS = ("ladder", "halves", "steps", "matrix")  # the first is the default
# the ladder's own check: predicting the top rung from the others must be within this relative error at
# every rank 1…100 (or 1…n), else no prediction is offered (an estimator that fails is not a default)
LADDER_TOLERANCE = 0.2


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


def half_batch_eigenvalues(K: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(λ(B̄), λ(B̄/2)), each (n,) descending: the eigenvalues of H Hᵀ and the mean over the two halves of
    those of (H ± Δ)(H ± Δ)ᵀ, from the Gram matrix K of [H; Δ] (2n × 2n)."""
    KH, KD, KX = K[:n, :n], K[n:, n:], K[:n, n:]
    run = np.linalg.eigvalsh(KH)[::-1]
    halves = [np.linalg.eigvalsh(KH + KD + sign * (KX + KX.T))[::-1] for sign in (1, -1)]
    return run, (halves[0] + halves[1]) / 2


def linear_in_inverse_batch(batches, eigenvalues) -> tuple[np.ndarray, np.ndarray]:
    """Per rank, λ_k(B) = a_k + b_k / B fitted by least squares over the rungs: ``batches`` (m,) and
    ``eigenvalues`` (m, r), rank k in column k. Returns (a (r,), b (r,)); a is the B = inf limit."""
    x = 1 / np.asarray(batches, dtype=float)
    X = np.c_[np.ones_like(x), x]
    (a, b), *_ = np.linalg.lstsq(X, np.asarray(eigenvalues, dtype=float), rcond=None)
    return a, b


def halves_gram(K: np.ndarray, n: int, f: float) -> np.ndarray:
    """U diag(λ(B̄) − f·[λ(B̄/2) − λ(B̄)]) Uᵀ, U the eigenvectors of H Hᵀ (``halves`` estimator)."""
    _, half = half_batch_eigenvalues(K, n)
    run, U = np.linalg.eigh(K[:n, :n])  # the run's eigenvalues and vectors from one decomposition
    run, U = run[::-1], U[:, ::-1]
    predicted = run - f * (half - run)
    return (U * predicted) @ U.T


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


def rank_range_errors(predicted: np.ndarray, measured: np.ndarray, ranges) -> dict[str, dict]:
    """Relative errors of a predicted spectrum (n,) against a measured one (n,), both in rank order, per rank
    range ``(lo, hi)`` (1-based, inclusive, ``hi`` capped at n; empty ranges left out), keyed ``"lo-hi"``: rank
    by rank (``max``, ``median``) and of the range's energy (``energy``)."""
    n, out = len(measured), {}
    for lo, hi in ranges:
        hi = min(hi, n)
        if lo > hi:
            continue
        p, m = predicted[lo - 1 : hi], measured[lo - 1 : hi]
        rel = np.abs(p - m) / np.abs(m)
        out[f"{lo}-{hi}"] = {
            "max": float(rel.max()),
            "median": float(np.median(rel)),
            "energy": float(abs(p.sum() - m.sum()) / abs(m.sum())),
        }
    return out


def ladder_gram(K: np.ndarray, n: int, sizes, batch: float) -> tuple[np.ndarray, dict]:
    """The ``ladder`` estimate at ``batch`` from the Gram matrix K of the probe rungs stacked (sizes
    increasing, rung j in rows [j n, (j + 1) n)): per rank, the line in 1/B through every rung, evaluated
    at ``batch`` (inf: its intercept), on the top rung's eigenvectors. Also returns the line's
    leave-top-rung-out error (fit the others, predict the top one) per rank range."""
    eigs, vecs = zip(*(np.linalg.eigh(K[j * n : (j + 1) * n, j * n : (j + 1) * n]) for j in range(len(sizes))))
    eigs = np.array([e[::-1] for e in eigs])
    a, b = linear_in_inverse_batch(sizes, eigs)
    predicted = a if math.isinf(batch) else a + b / batch
    U = vecs[-1][:, ::-1]
    validation = {}
    if len(sizes) >= 3:
        a3, b3 = linear_in_inverse_batch(sizes[:-1], eigs[:-1])
        errors = rank_range_errors(
            np.sort(a3 + b3 / sizes[-1])[::-1], eigs[-1], ((1, 10), (11, 100), (1, 100), (101, n))
        )
        validation = {ranks: {"max": e["max"], "median": e["median"]} for ranks, e in errors.items()}
    return (U * predicted) @ U.T, {"rungs": list(map(int, sizes)), "leave_top_out_rel_error": validation}


def check_ladder(info: dict, sizes, batch: float) -> None:
    """Refuse a prediction whose own leave-top-out check fails (:data:`LADDER_TOLERANCE`), or that has
    no check (fewer than three rungs); a batch that is a rung is measured, not predicted."""
    if batch in sizes:
        raise SpectralError(f"batch {batch:g} is a probe rung: analyse it with --stream probe{int(batch)}")
    errors = info["leave_top_out_rel_error"]
    key = next((k for k in errors if k.startswith("1-") and k != "1-10"), None)
    if key is None:
        raise SpectralError(f"the ladder needs three probe rungs to check itself; this run has {list(sizes)}")
    worst = errors[key]["max"]
    if worst > LADDER_TOLERANCE:
        raise SpectralError(
            f"no prediction at batch {label(batch)[1:]}: the ladder's own check fails. Predicting probe{sizes[-1]} "
            f"from the lower rungs misses ranks {key} by up to {worst:.0%} (median {errors[key]['median']:.0%}; "
            f"tolerance {LADDER_TOLERANCE:.0%}), so an extrapolation would be worse. "
            + (
                "The rungs themselves are measurements: analyse --stream probe<m>"
                if math.isinf(batch)
                else f"Measure that batch instead: collect with --probe-batches ...,{batch:g} and analyse --stream "
                f"probe{batch:g}"
            )
        )


def _predicted_gram(store, stream, estimator, batch, M_args, checkpoint) -> tuple:
    """(G predicted n × n, the TrajectoryMatrix of the streams read, index of the block whose rows give
    the components, its Gram block, K, info) for the Gram-route estimators."""
    n = store.n_steps
    if estimator == "ladder":
        sizes = probe_sizes(store.streams)
        if len(sizes) < 2:
            raise SpectralError(
                f"{store.root} has {len(sizes)} probe stream(s): collect with --probe-batches (e.g. 128,256,512,1000) "
                "to predict other batch sizes (module docstring of spectral.analyse.batch)"
            )
        M = TrajectoryMatrix(store, tuple(map(probe_stream, sizes)), **M_args)
        K = M.gram(checkpoint=checkpoint)
        G, info = ladder_gram(K, n, sizes, batch)
        check_ladder(info, sizes, batch)
        top = len(sizes) - 1
        return G, M, top, K[top * n :, top * n :], K, {**info, "run_batch_size": float(sizes[-1])}
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
    M = TrajectoryMatrix(store, (stream, NOISE_STREAM), **M_args)
    K = M.gram(checkpoint=checkpoint)
    info = {
        "run_batch_size": run_batch,
        "factor": f,
        "noise_trace_fraction": float(f * np.trace(K[n:, n:]) / np.trace(K[:n, :n])),
        "resolution": resolution(K, n, f),
    }
    if estimator == "matrix":
        return None, M, 0, K[:n, :n], K, info
    return (halves_gram if estimator == "halves" else steps_gram)(K, n, f), M, 0, K[:n, :n], K, info


def predict(
    store,
    k: int,
    batch: float,
    *,
    stream="clipped",
    split="half",
    estimator="ladder",
    max_memory=None,
    progress=False,
    components_out=None,
    checkpoint=None,
    ops=None,
):
    """The spectrum and G_k curves of ``stream`` predicted at ``batch`` (see the module docstring).

    Returns (Spectrum, in-sample G (step × k), held-out G or None for ``split="none"``, info).
    Two passes over the streams read: their Gram matrix, then the components.
    """
    if estimator not in ESTIMATORS:
        raise SpectralError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    if not batch > 0:
        raise SpectralError(f"batch size must be positive or inf, got {batch}")
    n = store.n_steps
    M_args = dict(max_memory=max_memory, progress=progress, ops=ops)
    G, M, block, K_rows, K, info = _predicted_gram(store, stream, estimator, batch, M_args, checkpoint)
    if estimator == "matrix":
        theta, A, all_theta, scores, norms, residuals, G_in, G_out = _matrix_route(K, n, info["factor"], k, split)
    else:
        theta, A, all_theta, scores, norms, residuals, G_in, G_out = _gram_route(G, K_rows, M, block, n, k, split)
    if components_out is not None:
        out = NpyRowWriter(components_out, (M.d, len(theta)), np.float32)
        M.rmatmat(A, out=out, dtype=np.float32)
        V = out.close()
    else:
        V = M.rmatmat(A, dtype=np.float32)
    info = {
        "batch_size": batch if not math.isinf(batch) else "inf",
        "estimator": estimator,
        **info,
        "negative_eigenvalues": int((all_theta < 0).sum()),
        "min_eigenvalue": float(all_theta.min()),
    }
    source = f"probe rungs {info['rungs']}" if estimator == "ladder" else f"the run's batch {info['run_batch_size']:g}"
    spectrum = Spectrum(
        eigenvalues=theta, components=V, scores=scores, row_sq_norms=norms, residuals=residuals,
        total_energy=float(norms.sum()), method="gram", centered=False, passes=M.passes,
        reason=f"predicted at batch {label(batch)[1:]} ({estimator} estimator, from {source})",
        seconds=M.io["pass_seconds"], info=info,
    )  # fmt: skip
    return spectrum, G_in, G_out, info


def _gram_route(G, K_rows, M, block, n, k, split):
    """The prediction from the n × n estimate ``G``: its top eigenpairs, the coefficients ``A`` that map the
    stored rows of ``block`` to components, scores, norms, residuals and the G_k curves."""
    theta, U, all_theta = steps_solve(G, min(k, n))
    # v = Hᵀ u / ‖Hᵀ u‖ over the rows of ``block``; ‖Hᵀ u‖² = uᵀ (H Hᵀ) u
    scale = 1 / np.sqrt(np.einsum("ij,ij->j", U, K_rows @ U))
    A = np.zeros((M.shape[0], len(theta)))
    A[block * n : (block + 1) * n] = U * scale
    scores, norms = K_rows @ U * scale, np.diag(G)  # h_t·v; the predicted ‖h̃_t‖²
    residuals = np.zeros(len(theta))  # exact eigenpairs of the n × n estimate (float64 eigh)
    G_in = steps_curves(G, theta, U, np.arange(n), rlc.k_grid(len(theta)))
    G_out = None
    if split != "none":
        fit, _ = rlc.split_rows(n, split)
        G_out = rlc.held_out_from_gram(G, min(k, len(fit)), split=split)[0]
    return theta, A, all_theta, scores, norms, residuals, G_in, G_out


def _matrix_route(K, n, f, k, split):
    """The ``matrix`` estimator's eigenpairs, scores, certificate and curves (module docstring)."""
    steps = np.arange(n)
    theta, A, all_theta = solve(K, n, f, k)
    # certificate: M_B v − θ v = Zᵀ r with r = S K a − θ a, so its norm² is rᵀ K r
    s = np.r_[np.ones(n), -f * np.ones(n)]
    R = s[:, None] * (K @ A) - A * theta
    residuals = np.sqrt(np.clip(np.einsum("ij,ij->j", R, K @ R), 0, None)) / np.abs(theta)
    scores, _, norms = step_energies(K, n, f, A, steps, np.arange(2 * n))
    G_in = curves(K, n, f, A, steps, np.arange(2 * n), rlc.k_grid(len(theta)))
    G_out = None
    if split != "none":
        fit, test = rlc.split_rows(n, split)
        idx = np.r_[fit, fit + n]
        # K_fit indexes [H_fit; Δ_fit]: its own n is len(fit)
        theta_f, A_f, _ = solve(K[np.ix_(idx, idx)], len(fit), f, min(k, len(fit)))
        G_out = curves(K, n, f, A_f, test, idx, rlc.k_grid(len(theta_f)))
    return theta, A, all_theta, scores, norms, residuals, G_in, G_out
