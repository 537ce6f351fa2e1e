"""Top-k principal components of a gradient trajectory H (n_steps, d), out of core.

The paper analyses the uncentred second moment HᵀH (d×d). Its nonzero eigenvalues are those of
the n×n Gram matrix G = HHᵀ, and with G = U Λ Uᵀ the eigenvectors are V = Hᵀ U Λ^{-1/2}. So all
methods but the reference work in the n-dimensional step space and touch the d-dimensional
side only in streamed passes. The methods are the table :data:`~spectral.analyse.solvers.SOLVERS`
(one function each, described there); :func:`choose_method` states the ``auto`` rule, and
:func:`principal_components` builds the :class:`Spectrum` from any solver's solution.

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

from .. import jsonio, layout
from ..errors import SpectralError
from .matrix import NpyRowWriter, default_memory, trajectory_matrix
from .solvers import SOLVERS, Options, Solution

METHODS = ("auto", *SOLVERS)


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
        comp_path = directory / layout.COMPONENTS
        if isinstance(self.components, np.memmap) and self.components.mode != "r":
            self.components.flush()
        elsewhere = not (
            isinstance(self.components, np.memmap) and Path(self.components.filename) == comp_path.resolve()
        )
        if self.components is not None and elsewhere:
            np.save(comp_path, np.asarray(self.components, dtype=np.float32))
        for name in ("eigenvalues", "scores", "row_sq_norms", "residuals"):
            np.save(directory / f"{name}.npy", getattr(self, name))
        self.to_frame().to_csv(directory / layout.SPECTRUM, index=False)
        (directory / layout.SUMMARY).write_text(jsonio.dumps({**self.summary(), **(extra or {})}, indent=1))
        return directory

    @classmethod
    def load(cls, directory) -> Spectrum:
        directory = Path(directory)
        if not (directory / layout.SUMMARY).is_file():
            raise SpectralError(f"{directory} holds no saved spectrum (no {layout.SUMMARY})")
        s = json.loads((directory / layout.SUMMARY).read_text())
        arrays = {n: np.load(directory / f"{n}.npy") for n in ("eigenvalues", "scores", "row_sq_norms", "residuals")}
        components = np.load(directory / layout.COMPONENTS, mmap_mode="r")
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


def choose_method(n: int, d: int, k: int, max_memory: int) -> tuple[str, str]:
    """(method, reason) for ``--method auto``: the exact Gram method whenever the n×n matrix, its
    eigenvectors and workspace (3·8·n² bytes) fit in ``max_memory``; else Lanczos for k ≤ 10 and
    randomized subspace iteration above."""
    gram_bytes = 3 * 8 * n * n
    if gram_bytes <= max_memory:
        return "gram", f"the {n}x{n} Gram matrix ({gram_bytes / 2**20:.0f} MiB) fits in memory: exact in two passes"
    if k <= 10:
        return "lanczos", f"n={n} is too large for an n x n Gram matrix and only k={k} pairs are wanted"
    return "randomized", f"n={n} is too large for an n x n Gram matrix ({gram_bytes / 2**30:.1f} GiB)"


def resolve_method(method: str, n: int, d: int, k: int, max_memory: int) -> tuple[str, str]:
    """(solver, reason): ``auto`` by :func:`choose_method`; Lanczos asked for all n pairs (ARPACK
    finds at most n − 1) becomes the exact Gram method."""
    if method not in METHODS:
        raise SpectralError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    reason = "requested"
    if method == "auto":
        method, reason = choose_method(n, d, k, max_memory)
    if method == "lanczos" and k >= n:
        method, reason = "gram", f"lanczos finds at most n - 1 = {n - 1} pairs; k = {k} asks for all: exact Gram"
    return method, reason


def check_k(k: int, n: int, d: int, centered: bool) -> None:
    limit = min(n - 1 if centered else n, d)
    if not 1 <= k <= limit:
        raise SpectralError(f"k={k} must be between 1 and min(n{'-1' if centered else ''}, d) = {limit} (n={n}, d={d})")


def principal_components(
    source, k: int, *, stream: str = "clipped", method: str = "auto", centered: bool = False,
    max_memory: int | None = None, components_out=None, oversample: int = 10, n_iter: int = 4,
    orthiter_iters: int = 10, seed: int = 0, rows=None, progress: bool = False, checkpoint_dir=None,
    client=None, device=None,
) -> Spectrum:  # fmt: skip
    """Top-k principal components of a trajectory.

    Parameters
    ----------
    source : a :class:`spectral.store.Store`, an array of shape (n, d), or a :class:`TrajectoryMatrix`
    k : number of components, 1 <= k <= min(n, d)
    method : "auto" or a solver of :data:`~spectral.analyse.solvers.SOLVERS` (see :func:`choose_method`)
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
    budget = default_memory() if max_memory is None else int(max_memory)
    M = trajectory_matrix(source, stream, rows=rows, max_memory=budget, progress=progress, client=client, device=device)
    check_k(k, M.n, M.d, centered)
    method, reason = resolve_method(method, M.n, M.d, k, budget)
    checkpoints = None
    if checkpoint_dir is not None and client is None:
        checkpoints = Path(checkpoint_dir)
        checkpoints.mkdir(parents=True, exist_ok=True)
    options = Options(centered, seed, oversample, n_iter, orthiter_iters, checkpoints)
    t0 = time.perf_counter()
    solution = SOLVERS[method](M, k, options)
    if "warning" in solution.info:
        warnings.warn(solution.info["warning"], stacklevel=2)
    V = _components(M, solution, components_out)
    # the eigenvalues and certificate come from the float64 solution; V is stored in float32
    scores = solution.scores if solution.scores is not None else M.matmat(V)
    return Spectrum(
        eigenvalues=solution.eigenvalues, components=V, scores=scores, row_sq_norms=solution.row_sq_norms,
        residuals=solution.residuals, total_energy=solution.total_energy, method=method, reason=reason,
        centered=centered, passes=M.passes, seconds=time.perf_counter() - t0, gram=solution.gram,
        info={**solution.info, "io": _io(M)} if hasattr(M, "io") else solution.info,
    )  # fmt: skip


def _components(M, solution: Solution, path) -> np.ndarray:
    """The (d, k) components, float32: V = Hᵀ A written block by block into the .npy file at ``path``
    (returned as a read-only memory map, never resident as a whole), or a d-space solver's V."""
    k = len(solution.eigenvalues)
    if path is None:
        if solution.components is not None:
            return solution.components
        return M.rmatmat(solution.coefficients, dtype=np.float32)
    out = NpyRowWriter(path, (M.d, k), np.float32)
    if solution.components is not None:
        out[0 : M.d] = solution.components
    else:
        M.rmatmat(solution.coefficients, out=out, dtype=np.float32)
    return out.close()


def _io(M) -> dict:
    """What the passes read: bytes, reader time, time waited, and the rate while reading."""
    io = dict(M.io)
    io["read_rate_bytes_per_s"] = io["bytes"] / io["read_seconds"] if io["read_seconds"] else None
    io["block_cols"], io["buffer_bytes"] = M.block_cols, M.buffer_bytes()
    return io
