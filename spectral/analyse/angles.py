"""Principal angles between the top-k subspaces of two trajectories, from one pass over both.

For trajectories H_A (n_A × d) and H_B (n_B × d) over the same parameters, the Gram matrix of the rows
stacked, K = [H_A; H_B][H_A; H_B]ᵀ, holds everything: with H_A H_Aᵀ = U_A Λ_A U_Aᵀ the top-k components
are V_A = H_Aᵀ U_A Λ_A^-½ (orthonormal), so

    V_Aᵀ V_B = Λ_A^-½ U_Aᵀ (H_A H_Bᵀ) U_B Λ_B^-½     (k × k, from the cross block of K)

and the cosines of the principal angles between span(V_A) and span(V_B) are its singular values
(Björck & Golub). The energy of run A captured by B's top k is ‖H_A V_B‖²_F / ‖H_A‖²_F with
H_A V_B = (H_A H_Bᵀ) U_B Λ_B^-½. No d × k array is formed; memory is O((n_A + n_B)²).
"""

from __future__ import annotations

import numpy as np

from ..errors import SpectralError
from .matrix import TrajectoryMatrix


def check_compatible(store_a, store_b) -> None:
    """Two stores whose rows can be compared: the same d and the same parameter layout."""
    if store_a.d != store_b.d:
        raise SpectralError(
            f"the runs have different d ({store_a.d:,} vs {store_b.d:,}): their subspaces do not compare"
        )
    names_a = [(p.name, p.offset, p.numel) for p in store_a.layout]
    names_b = [(p.name, p.offset, p.numel) for p in store_b.layout]
    if names_a != names_b:
        first = next((a, b) for a, b in zip(names_a, names_b) if a != b) if len(names_a) == len(names_b) else None
        raise SpectralError(
            "the runs store different parameter layouts"
            + (
                f" (first difference: {first[0][0]} vs {first[1][0]})"
                if first
                else f" ({len(names_a)} vs {len(names_b)} tensors)"
            )
            + ": their subspaces do not compare"
        )


def stacked_gram(store_a, stream_a: str, store_b, stream_b: str, max_memory=None, progress=False, ops=None):
    """K = [H_A; H_B][H_A; H_B]ᵀ ((n_A + n_B) square, float64) in one pass over both stores."""
    check_compatible(store_a, store_b)
    if store_a.root.resolve() == store_b.root.resolve():  # two streams of one store: one stacked matrix
        return TrajectoryMatrix(store_a, (stream_a, stream_b), max_memory=max_memory, progress=progress, ops=ops).gram()
    half = None if max_memory is None else max_memory // 2
    A = TrajectoryMatrix(store_a, stream_a, max_memory=half, progress=progress, ops=ops)
    B = TrajectoryMatrix(store_b, stream_b, max_memory=half, progress=False, ops=ops)
    # both read in the same column blocks, so the pass walks the two stores side by side
    B.block_cols = A.block_cols = min(A.block_cols, B.block_cols)
    B.compute_cols = A.compute_cols = min(A.compute_cols, B.compute_cols)
    KA, KB, KX = A.ops.zeros((A.n, A.n)), A.ops.zeros((B.n, B.n)), A.ops.zeros((A.n, B.n))
    for (_, _, Ba), (_, _, Bb) in zip(A.blocks("cross gram"), B.blocks("cross gram")):
        KA += Ba @ Ba.T
        KB += Bb @ Bb.T
        KX += Ba @ Bb.T
    KA, KB, KX = (A.ops.to_host(x) for x in (KA, KB, KX))
    return np.block([[KA, KX], [KX.T, KB]])


def _top(G: np.ndarray, k: int, label: str):
    lam, U = np.linalg.eigh(G)
    lam, U = lam[::-1], U[:, ::-1]
    rank = int((lam > max(lam[0], 0) * len(G) * 1e-12).sum())
    if k > rank:
        raise SpectralError(f"k = {k} exceeds the rank of {label}'s trajectory ({rank})")
    return lam[:k], U[:, :k]


def principal_angles(K: np.ndarray, n_a: int, ks) -> list[dict]:
    """Per k in ``ks``: ``{"k", "cosines" (descending), "energy_a_in_b", "energy_b_in_a"}`` from the stacked
    Gram matrix K of [H_A; H_B] (n_A + n_B square)."""
    KA, KB, KX = K[:n_a, :n_a], K[n_a:, n_a:], K[:n_a, n_a:]
    out = []
    for k in ks:
        la, Ua = _top(KA, k, "run A")
        lb, Ub = _top(KB, k, "run B")
        Ca, Cb = Ua / np.sqrt(la), Ub / np.sqrt(lb)
        cosines = np.clip(np.linalg.svd(Ca.T @ KX @ Cb, compute_uv=False), 0.0, 1.0)
        out.append(
            {
                "k": int(k),
                "cosines": np.sort(cosines)[::-1].tolist(),
                "energy_a_in_b": float(np.sum((KX @ Cb) ** 2) / np.trace(KA)),
                "energy_b_in_a": float(np.sum((KX.T @ Ca) ** 2) / np.trace(KB)),
                "energy_a_own": float(la.sum() / np.trace(KA)),
                "energy_b_own": float(lb.sum() / np.trace(KB)),
            }
        )
    return out
