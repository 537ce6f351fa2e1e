"""Top-k principal components of a gradient trajectory H (n_steps, d), out of core.

The paper analyses the uncentred second moment HᵀH (d×d). Its nonzero eigenvalues are those of
the n×n Gram matrix G = HHᵀ, and with G = U Λ Uᵀ the eigenvectors are V = Hᵀ U Λ^{-1/2}. So all
methods but the reference work in the n-dimensional step space and touch the d-dimensional
side only in streamed passes:

``gram``        G in one pass (float64), ``eigh``, then V in a second pass. Exact; needs n² memory.
``randomized``  subspace iteration with a Gaussian start on G, applied as H(HᵀQ) in one pass
                each (Halko et al.), for n too large for an n×n matrix.
``lanczos``     ARPACK ``eigsh`` on the same streamed operator; one pass per matrix-vector product.
``seedcode``    the authors' solver exactly (ml-swissknife ``orthogonal_iteration``): a Gaussian start,
                V ← Gram–Schmidt(HᵀH V) ``orthiter_iters`` times, eigenvalues as per-column Rayleigh
                quotients ‖H v‖², no Rayleigh–Ritz; computed in step space (3 passes), to show how
                much of a printed slope is the solver's.
``orthiter``    the seed code's orthogonal iteration in d-space (k vectors, 10 iterations):
                a reference for comparison, two passes per iteration, V held in memory.

Centred (covariance) analysis replaces G by P G P with P = I − 11ᵀ/n. Every result carries a
certificate: relative residuals ‖HᵀH v − λ v‖ / λ and the captured energy Σ_{j≤k} λ_j / ‖H‖_F².
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse.linalg

from ..errors import SpectralError
from .matrix import TrajectoryMatrix, default_memory, load_checkpoint, save_checkpoint, trajectory_matrix

METHODS = ("auto", "gram", "randomized", "lanczos", "orthiter", "seedcode")


@dataclass
class Spectrum:
    """Top-k eigenpairs of HᵀH (or of the centred H_cᵀH_c).

    eigenvalues : (k,) descending; singular values of H are their square roots
    components  : (d, k) orthonormal eigenvectors (a memmap when saved)
    scores      : (n, k) projections H V of every stored gradient on the components
    row_sq_norms: (n,) ‖g_t‖² of every stored gradient (uncentred)
    residuals   : (k,) ‖HᵀH v − λ v‖ / λ
    total_energy: ‖H‖_F² (centred: ‖H_c‖_F²), the sum of all eigenvalues
    gram        : (n, n) H Hᵀ when the exact Gram method computed it (in memory only, not saved):
                  every held-out G_k curve follows from it without reading H again
    """

    eigenvalues: np.ndarray
    components: np.ndarray
    scores: np.ndarray
    row_sq_norms: np.ndarray
    residuals: np.ndarray
    total_energy: float
    method: str
    reason: str
    centered: bool
    passes: int
    seconds: float
    info: dict = field(default_factory=dict)
    gram: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def k(self) -> int:
        return len(self.eigenvalues)

    @property
    def singular_values(self) -> np.ndarray:
        """√λ; NaN where an estimated eigenvalue is negative (a batch-size prediction's can be)."""
        lam = np.asarray(self.eigenvalues, dtype=float)
        return np.sqrt(np.where(lam >= 0, lam, np.nan))

    @property
    def captured_energy(self) -> np.ndarray:
        """(k,) fraction of ‖H‖_F² in the top 1..k components."""
        return np.cumsum(self.eigenvalues) / self.total_energy

    def to_frame(self) -> pd.DataFrame:
        """One row per component: rank, eigenvalue, singular value, residual, captured energy."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, self.k + 1),
                "eigenvalue": self.eigenvalues,
                "singular_value": self.singular_values,
                "residual": self.residuals,
                "captured_energy": self.captured_energy,
            }
        )

    def summary(self) -> dict:
        return {
            "method": self.method,
            "reason": self.reason,
            "centered": self.centered,
            "k": self.k,
            "n": int(self.scores.shape[0]),
            "d": None if self.components is None else int(self.components.shape[0]),
            "passes": self.passes,
            "seconds": round(self.seconds, 3),
            "max_residual": float(np.max(self.residuals)),
            "captured_energy": float(self.captured_energy[-1]),
            "total_energy": float(self.total_energy),
            **self.info,
        }

    # ------------------------------------------------------------------ persistence
    def save(self, directory, extra: dict | None = None) -> Path:
        """Write eigenvalues/scores/norms (.npy), components (.npy, memory-mappable),
        spectrum.csv and summary.json (with ``extra`` added) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        comp_path = directory / "components.npy"
        if isinstance(self.components, np.memmap):
            self.components.flush()
        elsewhere = not (
            isinstance(self.components, np.memmap) and Path(self.components.filename) == comp_path.resolve()
        )
        if self.components is not None and elsewhere:
            np.save(comp_path, np.asarray(self.components, dtype=np.float32))
        for name in ("eigenvalues", "scores", "row_sq_norms", "residuals"):
            np.save(directory / f"{name}.npy", getattr(self, name))
        self.to_frame().to_csv(directory / "spectrum.csv", index=False)
        (directory / "summary.json").write_text(json.dumps({**self.summary(), **(extra or {})}, indent=1))
        return directory

    @classmethod
    def load(cls, directory) -> Spectrum:
        directory = Path(directory)
        if not (directory / "summary.json").is_file():
            raise SpectralError(f"{directory} holds no saved spectrum (no summary.json)")
        s = json.loads((directory / "summary.json").read_text())
        arrays = {n: np.load(directory / f"{n}.npy") for n in ("eigenvalues", "scores", "row_sq_norms", "residuals")}
        components = np.load(directory / "components.npy", mmap_mode="r")
        known = {
            "method",
            "reason",
            "centered",
            "k",
            "n",
            "d",
            "passes",
            "seconds",
            "max_residual",
            "captured_energy",
            "total_energy",
        }
        return cls(
            components=components,
            total_energy=s["total_energy"],
            method=s["method"],
            reason=s["reason"],
            centered=s["centered"],
            passes=s["passes"],
            seconds=s["seconds"],
            info={k: v for k, v in s.items() if k not in known},
            **arrays,
        )


# ---------------------------------------------------------------------- helpers
def _center(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0, keepdims=True)


def _top_eigh(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric matrix, descending."""
    m = S.shape[0]
    w, U = scipy.linalg.eigh(S, subset_by_index=[m - k, m - 1])
    return w[::-1], U[:, ::-1]


def gram_eigenpairs(G: np.ndarray, k: int, centered: bool = False):
    """Top-k eigenpairs of a Gram matrix G = H Hᵀ (n, n), or of the centred P G P.

    Returns (λ (k,), U (n, k), apply(Q) = (P G P) Q, trace of the analysed matrix).
    """
    S = _center(_center(G).T) if centered else G
    lam, U = _top_eigh(S, k)
    return lam, U, (lambda Q: S @ Q), float(np.trace(S))


def choose_method(n: int, d: int, k: int, max_memory: int) -> tuple[str, str]:
    """(method, reason) for ``--method auto``."""
    gram_bytes = 3 * 8 * n * n  # G, its eigenvectors, workspace
    if gram_bytes <= max_memory:
        return "gram", f"the {n}x{n} Gram matrix ({gram_bytes / 2**20:.0f} MiB) fits in memory: exact in two passes"
    if k <= 10:
        return "lanczos", f"n={n} is too large for an n x n Gram matrix and only k={k} pairs are wanted"
    return "randomized", f"n={n} is too large for an n x n Gram matrix ({gram_bytes / 2**30:.1f} GiB)"


def check_k(k: int, n: int, d: int, centered: bool) -> None:
    limit = min(n - 1 if centered else n, d)
    if not 1 <= k <= limit:
        raise SpectralError(f"k={k} must be between 1 and min(n{'-1' if centered else ''}, d) = {limit} (n={n}, d={d})")


# ---------------------------------------------------------------------- methods in step space
def _solve_in_step_space(M: TrajectoryMatrix, k, method, centered, oversample, n_iter, seed, checkpoints=None):
    """Return (λ (k,), U (n, k), apply(Q) = G Q, ‖g_t‖² (n,), trace of the analysed G, and the
    uncentred Gram matrix H Hᵀ when the method formed it, else None)."""
    P = _center if centered else (lambda X: X)
    if method == "gram":
        G = M.gram(checkpoint=checkpoints / "gram" if checkpoints else None)
        lam, U, apply, trace = gram_eigenpairs(G, k, centered)
        return lam, U, apply, np.diag(G).copy(), trace, G

    apply = lambda Q: P(M.hht(P(Q)))  # noqa: E731
    if method == "randomized":
        rng = np.random.default_rng(seed)
        Q, _ = np.linalg.qr(P(rng.standard_normal((M.n, min(k + oversample, M.n)))))
        stem = checkpoints / f"randomized-k{k}-o{oversample}-s{seed}-c{int(centered)}" if checkpoints else None
        saved = load_checkpoint(stem, M.identity) if stem else None
        done = 0
        if saved is not None and saved["iteration"] <= n_iter:
            Q, done = saved["array"], saved["iteration"]
        for it in range(done, n_iter):
            Q, _ = np.linalg.qr(apply(Q))
            if stem:
                save_checkpoint(stem, M.identity, Q, iteration=it + 1)
        Y = apply(Q)
        lam, W = _top_eigh(Q.T @ Y, k)  # Rayleigh–Ritz in the found subspace
        U = Q @ W
    elif method == "lanczos":
        op = scipy.sparse.linalg.LinearOperator(
            (M.n, M.n), matvec=lambda v: apply(v.reshape(-1, 1)).ravel(), matmat=apply, dtype=np.float64
        )
        v0 = P(np.random.default_rng(seed).standard_normal((M.n, 1))).ravel()
        lam, U = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=v0)
        order = np.argsort(lam)[::-1]
        lam, U = lam[order], U[:, order]
    else:
        raise SpectralError(f"unknown method {method!r}")
    sq, mean_sq = M.norms()
    return lam, U, apply, sq, _trace(sq, mean_sq, M.n, centered), None


def _trace(sq, mean_sq, n, centered) -> float:
    """‖H‖_F², or ‖H_c‖_F² = ‖H‖_F² − n‖mean‖² when centred."""
    return float(sq.sum() - (n * mean_sq if centered else 0.0))


class GaussianColumns:
    """A (d, k) standard normal matrix generated block by block (never held whole): ``[start:stop]``
    rows are drawn from a generator seeded by (seed, start), so any block is reproducible."""

    def __init__(self, d: int, k: int, seed: int, block: int = 65536):
        self.shape, self.seed, self.block = (d, k), seed, block

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start or 0, min(rows.stop, self.shape[0])
        out = np.empty((stop - start, self.shape[1]))
        for a in range(start - start % self.block, stop, self.block):  # whole generator blocks, cut to fit
            draw = np.random.default_rng([self.seed, a]).standard_normal((self.block, self.shape[1]))
            lo, hi = max(a, start), min(a + self.block, stop)
            out[lo - start : hi - start] = draw[lo - a : hi - a]
        return out


def seedcode_iterate(G: np.ndarray, A: np.ndarray, iters: int):
    """The authors' orthogonal iteration on the Gram matrix G = HHᵀ (n, n), from A = H V₀ (n, k).

    Theirs: V₀ Gaussian (d, k); each iteration W = HᵀH V, V = modified Gram–Schmidt(W) column by
    column, λ_j = ‖H v_j‖². After the first product every iterate is V = Hᵀ A, so HᵀH V = Hᵀ(G A),
    the Gram–Schmidt of W = Hᵀ A is Hᵀ A R⁻¹ with R the Cholesky factor of Aᵀ G A (Gram–Schmidt is
    that QR), and ‖H v_j‖ = ‖(G a)_j‖. Returns (λ (k,) descending, A with V = Hᵀ A, G A = H V).
    """
    for it in range(iters):
        if it:
            A = G @ A  # W = HᵀH V = Hᵀ (G A)
        R = np.linalg.cholesky(A.T @ G @ A).T  # W = Hᵀ A: WᵀW = Aᵀ G A = RᵀR
        A = scipy.linalg.solve_triangular(R, A.T, trans="T", lower=False).T  # V = W R⁻¹ = Hᵀ (A R⁻¹)
    GA = G @ A
    lam = np.einsum("ij,ij->j", GA, GA)  # per-column Rayleigh quotients ‖H v_j‖² (v_j unit)
    order = np.argsort(lam)[::-1]  # theirs come out nearly sorted; sorted here for the fits
    return lam[order], A[:, order], GA[:, order]


def _seedcode(M: TrajectoryMatrix, k, iters, seed, components_out, t0, reason, checkpoint_dir):
    """:func:`seedcode_iterate` on a trajectory: the Gram pass (or its checkpoint), H V₀, the components."""
    checkpoint = Path(checkpoint_dir) / "gram" if checkpoint_dir is not None else None
    G = M.gram(checkpoint=checkpoint)
    lam, A, GA = seedcode_iterate(G, M.matmat(GaussianColumns(M.d, k, seed)), iters)
    r = GA - A * lam  # HᵀH v − λ v = Hᵀ r
    residuals = np.sqrt(np.clip(np.einsum("ij,ij->j", r, G @ r), 0, None)) / lam
    out = None
    if components_out is not None:
        out = np.lib.format.open_memmap(components_out, mode="w+", dtype=np.float32, shape=(M.d, k))
    V = M.rmatmat(A, out=out, dtype=np.float32)
    sq = np.diag(G).copy()
    return Spectrum(
        lam,
        V,
        GA,
        sq,
        residuals,
        float(sq.sum()),
        "seedcode",
        reason,
        False,
        M.passes,
        time.perf_counter() - t0,
        {"iterations": iters},
        gram=G,
    )


def _orthiter(M: TrajectoryMatrix, k, centered, iters, seed):
    """The seed code's orthogonal iteration on HᵀH in d-space (reference method)."""
    P = _center if centered else (lambda X: X)
    V, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((M.d, k)))
    for _ in range(iters):
        V, _ = np.linalg.qr(M.rmatmat(P(M.matmat(V))))
    HV = P(M.matmat(V))
    W = M.rmatmat(HV)
    lam, R = _top_eigh(V.T @ W, k)  # Rayleigh–Ritz
    V, W = V @ R, W @ R
    residuals = np.linalg.norm(W - V * lam, axis=0) / np.abs(lam)
    return lam, V, residuals


def principal_components(
    source,
    k: int,
    *,
    stream: str = "clipped",
    method: str = "auto",
    centered: bool = False,
    max_memory: int | None = None,
    components_out=None,
    oversample: int = 10,
    n_iter: int = 4,
    orthiter_iters: int = 10,
    seed: int = 0,
    rows=None,
    progress: bool = False,
    checkpoint_dir=None,
    client=None,
    device=None,
) -> Spectrum:
    """Top-k principal components of a trajectory.

    Parameters
    ----------
    source : a :class:`spectral.store.Store`, an array of shape (n, d), or a :class:`TrajectoryMatrix`
    k : number of components, 1 <= k <= min(n, d)
    method : "auto", "gram", "randomized", "lanczos" or "orthiter" (see the module docstring)
    centered : covariance of the steps instead of the uncentred second moment (the paper's)
    max_memory : bytes for block buffers and, for "auto", the Gram matrix (default: a quarter
        of the available RAM)
    components_out : path of a .npy file to write the (d, k) components into (memory-mapped)
    rows : optional subset of steps to analyse
    checkpoint_dir : directory for per-pass checkpoints ("gram": the partial Gram sum, saved
        every minute; "randomized": the basis after each iteration). A rerun on the same data
        continues from them; a completed Gram is reused, so another k costs one pass.
    client : a ``dask.distributed.Client``: every pass runs blockwise on its workers
        (see :mod:`spectral.analyse.distributed`); checkpoints are not used then.
    device : ``auto``, ``cpu`` or ``cuda[:i]``: on a GPU the passes run as float64 torch matmuls
        there (see :mod:`spectral.analyse.backends`); None or ``cpu``: numpy

    Returns
    -------
    Spectrum
    """
    if method not in METHODS:
        raise SpectralError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    budget = default_memory() if max_memory is None else int(max_memory)
    M = trajectory_matrix(source, stream, rows=rows, max_memory=budget, progress=progress, client=client, device=device)
    check_k(k, M.n, M.d, centered)
    reason = "requested"
    if method == "auto":
        method, reason = choose_method(M.n, M.d, k, budget)
    if method == "lanczos" and k >= M.n:  # ARPACK finds at most n - 1 pairs of an n x n operator
        method, reason = "gram", f"lanczos finds at most n - 1 = {M.n - 1} pairs; k = {k} asks for all: exact Gram"
    t0 = time.perf_counter()

    if method == "seedcode":
        if centered:
            raise SpectralError("seedcode analyses the uncentred HᵀH only, as the authors' code does")
        return _seedcode(M, k, orthiter_iters, seed, components_out, t0, reason, checkpoint_dir)
    if method == "orthiter":
        lam, V, residuals = _orthiter(M, k, centered, orthiter_iters, seed)
        if components_out is not None:
            out = np.lib.format.open_memmap(components_out, mode="w+", dtype=np.float32, shape=V.shape)
            out[:] = V
            V = out
        scores = M.matmat(V)
        sq, mean_sq = M.norms()
        return Spectrum(
            lam,
            V,
            scores,
            sq,
            residuals,
            _trace(sq, mean_sq, M.n, centered),
            method,
            reason,
            centered,
            M.passes,
            time.perf_counter() - t0,
            {"iterations": orthiter_iters},
        )

    checkpoints = None
    if checkpoint_dir is not None and client is None:
        checkpoints = Path(checkpoint_dir)
        checkpoints.mkdir(parents=True, exist_ok=True)
    lam, U, apply, sq, trace, G = _solve_in_step_space(M, k, method, centered, oversample, n_iter, seed, checkpoints)
    info = {"oversample": oversample, "n_iter": n_iter} if method == "randomized" else {}
    lam, U, info = _drop_null_directions(lam, U, trace, M.n, info)
    k = len(lam)
    sigma = np.sqrt(np.clip(lam, 0, None))
    inv = np.divide(1.0, sigma, out=np.zeros_like(sigma), where=sigma > sigma.max() * 1e-12)
    # certificate: HᵀH v − λ v = Hᵀ r with r = (G U − U Λ) Σ⁻¹, so its norm² is rᵀ G r
    r = (apply(U) - U * lam) * inv
    res_norm = np.sqrt(np.clip(np.einsum("ij,ij->j", r, apply(r)), 0, None))
    residuals = res_norm / np.abs(lam)
    out = None
    if components_out is not None:
        out = np.lib.format.open_memmap(components_out, mode="w+", dtype=np.float32, shape=(M.d, k))
    # V = Hᵀ U Σ⁻¹ (centred: U ⟂ 1, so Hᵀ P U = Hᵀ U), computed in float32 as it is stored;
    # the eigenvalues and certificate come from the float64 step-space solution
    V = M.rmatmat(U, out=out, scale=inv, dtype=np.float32)
    if not centered:
        scores = U * sigma  # H V = G U Σ⁻¹ = U Σ
    elif G is not None:
        scores = G @ (U * inv)  # H V with the uncentred rows, from the Gram matrix: no pass
    else:
        scores = M.matmat(V)
    info = {**info, "io": _io(M)} if hasattr(M, "io") else info
    return Spectrum(
        lam,
        V,
        scores,
        sq,
        residuals,
        trace,
        method,
        reason,
        centered,
        M.passes,
        time.perf_counter() - t0,
        info,
        gram=G,
    )


def _io(M) -> dict:
    """What the passes read: bytes, reader time, time waited, and the rate while reading."""
    io = dict(M.io)
    io["read_rate_bytes_per_s"] = io["bytes"] / io["read_seconds"] if io["read_seconds"] else None
    io["block_cols"], io["buffer_bytes"] = M.block_cols, M.buffer_bytes()
    return io


def _drop_null_directions(lam, U, trace: float, n: int, info: dict):
    """Keep the pairs with a nonzero eigenvalue. A trajectory of rank r < k (repeated rows, all-zero
    clipped rows from empty Poisson batches) has only r principal directions; the rest would be
    zero-norm components with undefined (NaN) certificates. Warns, and records ``rank`` in ``info``."""
    if not trace > 0:
        raise SpectralError("the trajectory is all zeros (‖H‖_F = 0): it has no principal components")
    # eigenvalues of a float64 Gram of n rows are exact to about n * eps * λ_max
    keep = lam > lam.max() * max(n, 10) * 10 * np.finfo(float).eps
    if keep.all():
        return lam, U, info
    r = int(keep.sum())
    message = f"the trajectory has rank {r} < k = {len(lam)}: returning its {r} nonzero principal directions"
    warnings.warn(message, stacklevel=3)
    return lam[keep], U[:, keep], {**info, "rank": r, "warning": message}
