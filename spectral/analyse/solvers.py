"""The eigensolvers of :func:`spectral.analyse.principal_components`, one function each, in one table.

Every solver takes the trajectory matrix M (n steps × d), k and the :class:`Options`, and returns a
:class:`Solution`: the top-k eigenvalues of HᵀH (centred: H_cᵀH_c), the components either as
step-space coefficients A (V = Hᵀ A, written by one more pass) or, for a d-space method, as V itself,
and each pair's certificate. To add a solver: write ``solve_<name>(M, k, opts) -> Solution`` here,
add it to :data:`SOLVERS`, and test it against dense ``numpy.linalg`` (tests/test_analyse.py).

``gram``        G = HHᵀ in one pass (float64), ``eigh``. Exact; needs n² memory.
``randomized``  subspace iteration with a Gaussian start on G, applied as H(HᵀQ) in one pass each
                (Halko et al.), for n too large for an n×n matrix.
``lanczos``     ARPACK ``eigsh`` on the same streamed operator; one pass per matrix-vector product.
``seedcode``    the authors' solver exactly (ml-swissknife ``orthogonal_iteration``): a Gaussian start,
                V ← Gram–Schmidt(HᵀH V) ``iterations`` times, eigenvalues as per-column Rayleigh
                quotients ‖H v‖², no Rayleigh–Ritz; computed in step space (3 passes).
``orthiter``    the seed code's orthogonal iteration in d-space (k vectors, ``iterations`` times):
                a reference for comparison, two passes per iteration, V held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from ..errors import SpectralError
from .matrix import TrajectoryMatrix, load_checkpoint, save_checkpoint


@dataclass
class Options:
    """Settings a solver may use (each reads its own)."""

    centered: bool = False
    seed: int = 0
    oversample: int = 10  # randomized
    n_iter: int = 4  # randomized
    iterations: int = 10  # seedcode, orthiter
    checkpoints: Path | None = None  # per-pass checkpoints (gram, randomized)


@dataclass
class Solution:
    """What a solver found. Exactly one of ``coefficients`` (n, k), with V = Hᵀ A, and ``components``
    (d, k) is set; ``gram`` is H Hᵀ when the solver formed it (held-out curves reuse it)."""

    eigenvalues: np.ndarray
    scores: np.ndarray  # (n, k) H V
    row_sq_norms: np.ndarray  # (n,) ‖g_t‖²
    residuals: np.ndarray  # (k,) ‖HᵀH v − λ v‖ / λ
    total_energy: float
    coefficients: np.ndarray | None = None
    components: np.ndarray | None = None
    gram: np.ndarray | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- shared pieces
def center(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0, keepdims=True)


def top_eigh(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric matrix, descending."""
    m = S.shape[0]
    w, U = scipy.linalg.eigh(S, subset_by_index=[m - k, m - 1])
    return w[::-1], U[:, ::-1]


def gram_eigenpairs(G: np.ndarray, k: int, centered: bool = False):
    """Top-k eigenpairs of a Gram matrix G = H Hᵀ (n, n), or of the centred P G P.

    Returns (λ (k,), U (n, k), apply(Q) = (P G P) Q, trace of the analysed matrix).
    """
    S = center(center(G).T) if centered else G
    lam, U = top_eigh(S, k)
    return lam, U, (lambda Q: S @ Q), float(np.trace(S))


def drop_null_directions(lam, U, trace: float, n: int, info: dict):
    """Keep the pairs with a nonzero eigenvalue. A trajectory of rank r < k (repeated rows, all-zero
    clipped rows from empty Poisson batches) has only r principal directions; the rest would be
    zero-norm components with undefined (NaN) certificates. Records ``rank`` and ``warning`` in ``info``."""
    if not trace > 0:
        raise SpectralError("the trajectory is all zeros (‖H‖_F = 0): it has no principal components")
    # eigenvalues of a float64 Gram of n rows are exact to about n * eps * λ_max
    keep = lam > lam.max() * max(n, 10) * 10 * np.finfo(float).eps
    if keep.all():
        return lam, U, info
    r = int(keep.sum())
    message = f"the trajectory has rank {r} < k = {len(lam)}: returning its {r} nonzero principal directions"
    return lam[keep], U[:, keep], {**info, "rank": r, "warning": message}


def trace_of(sq, mean_sq, n, centered) -> float:
    """‖H‖_F², or ‖H_c‖_F² = ‖H‖_F² − n‖mean‖² when centred."""
    return float(sq.sum() - (n * mean_sq if centered else 0.0))


def step_space_solution(M, lam, U, apply, sq, trace, opts: Options, gram=None, info=None) -> Solution:
    """From eigenpairs (λ, U) of the step-space operator ``apply`` (G or P G P): drop null directions,
    certify each pair, and give the coefficients A = U Σ⁻¹ of the components V = Hᵀ A."""
    lam, U, info = drop_null_directions(lam, U, trace, M.n, info or {})
    sigma = np.sqrt(np.clip(lam, 0, None))
    inv = np.divide(1.0, sigma, out=np.zeros_like(sigma), where=sigma > sigma.max() * 1e-12)
    # certificate: HᵀH v − λ v = Hᵀ r with r = (G U − U Λ) Σ⁻¹, so its norm² is rᵀ G r
    r = (apply(U) - U * lam) * inv
    residuals = np.sqrt(np.clip(np.einsum("ij,ij->j", r, apply(r)), 0, None)) / np.abs(lam)
    if not opts.centered:
        scores = U * sigma  # H V = G U Σ⁻¹ = U Σ
    elif gram is not None:
        scores = gram @ (U * inv)  # H V with the uncentred rows (U ⟂ 1): from the Gram matrix, no pass
    else:
        scores = None  # the caller measures H V in a pass once V is written
    # V = Hᵀ U Σ⁻¹ (centred: U ⟂ 1, so Hᵀ P U = Hᵀ U)
    return Solution(lam, scores, sq, residuals, trace, coefficients=U * inv, gram=gram, info=info)


def streamed_operator(M: TrajectoryMatrix, centered: bool) -> Callable:
    """Q ↦ (P) H Hᵀ (P) Q, one pass per call."""
    P = center if centered else (lambda X: X)
    return lambda Q: P(M.hht(P(Q)))


# ---------------------------------------------------------------------- the solvers
def solve_gram(M: TrajectoryMatrix, k: int, opts: Options) -> Solution:
    G = M.gram(checkpoint=opts.checkpoints / "gram" if opts.checkpoints else None)
    lam, U, apply, trace = gram_eigenpairs(G, k, opts.centered)
    return step_space_solution(M, lam, U, apply, np.diag(G).copy(), trace, opts, gram=G)


def solve_randomized(M: TrajectoryMatrix, k: int, opts: Options) -> Solution:
    P = center if opts.centered else (lambda X: X)
    apply = streamed_operator(M, opts.centered)
    rng = np.random.default_rng(opts.seed)
    Q, _ = np.linalg.qr(P(rng.standard_normal((M.n, min(k + opts.oversample, M.n)))))
    stem = None
    if opts.checkpoints:
        stem = opts.checkpoints / f"randomized-k{k}-o{opts.oversample}-s{opts.seed}-c{int(opts.centered)}"
    saved = load_checkpoint(stem, M.identity) if stem else None
    done = 0
    if saved is not None and saved["iteration"] <= opts.n_iter:
        Q, done = saved["array"], saved["iteration"]
    for it in range(done, opts.n_iter):
        Q, _ = np.linalg.qr(apply(Q))
        if stem:
            save_checkpoint(stem, M.identity, Q, iteration=it + 1)
    lam, W = top_eigh(Q.T @ apply(Q), k)  # Rayleigh–Ritz in the found subspace
    sq, mean_sq = M.norms()
    info = {"oversample": opts.oversample, "n_iter": opts.n_iter}
    return step_space_solution(M, lam, Q @ W, apply, sq, trace_of(sq, mean_sq, M.n, opts.centered), opts, info=info)


def solve_lanczos(M: TrajectoryMatrix, k: int, opts: Options) -> Solution:
    P = center if opts.centered else (lambda X: X)
    apply = streamed_operator(M, opts.centered)
    op = scipy.sparse.linalg.LinearOperator(
        (M.n, M.n), matvec=lambda v: apply(v.reshape(-1, 1)).ravel(), matmat=apply, dtype=np.float64
    )
    v0 = P(np.random.default_rng(opts.seed).standard_normal((M.n, 1))).ravel()
    lam, U = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=v0)
    order = np.argsort(lam)[::-1]
    sq, mean_sq = M.norms()
    trace = trace_of(sq, mean_sq, M.n, opts.centered)
    return step_space_solution(M, lam[order], U[:, order], apply, sq, trace, opts)


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


def solve_seedcode(M: TrajectoryMatrix, k: int, opts: Options) -> Solution:
    """:func:`seedcode_iterate` on a trajectory: the Gram pass (or its checkpoint), H V₀, the components."""
    if opts.centered:
        raise SpectralError("seedcode analyses the uncentred HᵀH only, as the authors' code does")
    G = M.gram(checkpoint=opts.checkpoints / "gram" if opts.checkpoints else None)
    lam, A, GA = seedcode_iterate(G, M.matmat(GaussianColumns(M.d, k, opts.seed)), opts.iterations)
    r = GA - A * lam  # HᵀH v − λ v = Hᵀ r
    residuals = np.sqrt(np.clip(np.einsum("ij,ij->j", r, G @ r), 0, None)) / lam
    sq = np.diag(G).copy()
    info = {"iterations": opts.iterations}
    return Solution(lam, GA, sq, residuals, float(sq.sum()), coefficients=A, gram=G, info=info)


def solve_orthiter(M: TrajectoryMatrix, k: int, opts: Options) -> Solution:
    """The seed code's orthogonal iteration on HᵀH in d-space (reference method)."""
    P = center if opts.centered else (lambda X: X)
    V, _ = np.linalg.qr(np.random.default_rng(opts.seed).standard_normal((M.d, k)))
    for _ in range(opts.iterations):
        V, _ = np.linalg.qr(M.rmatmat(P(M.matmat(V))))
    W = M.rmatmat(P(M.matmat(V)))
    lam, R = top_eigh(V.T @ W, k)  # Rayleigh–Ritz
    V, W = V @ R, W @ R
    residuals = np.linalg.norm(W - V * lam, axis=0) / np.abs(lam)
    sq, mean_sq = M.norms()
    trace = trace_of(sq, mean_sq, M.n, opts.centered)
    info = {"iterations": opts.iterations}
    return Solution(lam, M.matmat(V), sq, residuals, trace, components=V, info=info)


SOLVERS: dict[str, Callable[[TrajectoryMatrix, int, Options], Solution]] = {
    "gram": solve_gram,
    "randomized": solve_randomized,
    "lanczos": solve_lanczos,
    "orthiter": solve_orthiter,
    "seedcode": solve_seedcode,
}
