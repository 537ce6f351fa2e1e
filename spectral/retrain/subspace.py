"""A top-r gradient subspace V_r (d, r) with orthonormal columns, and the two thin products it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import layout
from ..errors import SpectralError


class Subspace:
    """span(V) for V of shape (d, r) with orthonormal columns, or its orthogonal complement.

    ``project(g)`` = V (Vᵀ g), or g − V (Vᵀ g) with ``complement``: two thin matrix-vector products,
    O(d r) per step.
    """

    def __init__(self, V, complement: bool = False):
        V = torch.from_numpy(np.array(V, dtype=np.float32)) if isinstance(V, np.ndarray) else torch.as_tensor(V)
        if V.ndim != 2 or V.shape[1] > V.shape[0]:
            raise SpectralError(f"a subspace basis must have shape (d, r) with r <= d, got {tuple(V.shape)}")
        self.V = V.float().contiguous()
        self.complement = complement

    def to(self, device) -> Subspace:
        """The same subspace with its basis on ``device``."""
        return self if self.V.device == torch.device(device) else Subspace(self.V.to(device), self.complement)

    def orthogonal_complement(self) -> Subspace:
        """The complement of span(V) (the bulk: every direction but these)."""
        return Subspace(self.V, complement=not self.complement)

    def captured_energy(self, M) -> dict:
        """The share of the stored gradients' energy this subspace holds, Σ‖P h_t‖² / Σ‖h_t‖², over all
        steps and over the second half (held out from components fitted on the first half), from two
        passes over ``M`` (a TrajectoryMatrix or an (n, d) array)."""
        from ..analyse.matrix import TrajectoryMatrix

        M = M if isinstance(M, TrajectoryMatrix) else TrajectoryMatrix(np.asarray(M))
        sq, _ = M.norms()
        inside = (M.matmat(self.V.double().cpu().numpy()) ** 2).sum(1) if self.rank else np.zeros(M.n)
        captured = sq - inside if self.complement else inside
        half = slice(M.n // 2, None)
        return {
            "all_steps": float(captured.sum() / sq.sum()),
            "second_half": float(captured[half].sum() / sq[half].sum()),
        }

    @property
    def d(self) -> int:
        return self.V.shape[0]

    @property
    def rank(self) -> int:
        return self.V.shape[1]

    @classmethod
    def from_analysis(cls, directory, rank: int, first: int = 1) -> Subspace:
        """Components ``first`` … ``first + rank − 1`` (1-based; default the top ``rank``) saved by
        ``python -m spectral.analyse`` (components.npy, d x k)."""
        path = Path(directory) / layout.COMPONENTS
        if not path.is_file():
            raise SpectralError(f"{directory} has no {layout.COMPONENTS}; run python -m spectral.analyse first")
        try:
            components = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SpectralError(f"{path} is not a readable .npy array ({exc})") from None
        last = first - 1 + rank
        if components.ndim != 2 or not (1 <= rank and 1 <= first and last <= components.shape[1]):
            held = components.shape[1] if components.ndim == 2 else 0
            what = f"rank {rank} is" if first == 1 else f"components {first}-{last} are"
            raise SpectralError(
                f"{what} not available: {path} holds {held} components (analyse with --k {last} or more)"
            )
        return cls(np.asarray(components[:, first - 1 : last]))

    @classmethod
    def random(cls, d: int, rank: int, seed: int) -> Subspace:
        """A uniformly random ``rank``-dimensional subspace of R^d (QR of a Gaussian d x rank matrix): the
        control that tells "the top directions matter" from "any r directions would do"."""
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(d, rank, generator=g))
        return cls(q * torch.sign(torch.diagonal(r)))  # signs fixed: the same seed gives the same basis

    @classmethod
    def span_random(cls, rows, rank: int, seed: int) -> Subspace:
        """A random ``rank``-dimensional subspace of the span of ``rows`` (a TrajectoryMatrix or (n, d) array
        of stored gradients): Hᵀ W for a seeded Gaussian W (n, rank), orthonormalised. The control between
        the top directions and a uniformly random subspace: inside the gradients' span, not their top."""
        from ..analyse.matrix import TrajectoryMatrix

        M = rows if isinstance(rows, TrajectoryMatrix) else TrajectoryMatrix(np.asarray(rows))
        if rank > M.n:
            raise SpectralError(f"span-random {rank}: the trajectory has only {M.n} stored steps")
        W = np.random.default_rng([seed, rank, 0x7370616E]).standard_normal((M.n, rank))
        q, r = torch.linalg.qr(torch.from_numpy(M.rmatmat(W)))
        return cls((q * torch.sign(torch.diagonal(r))).float())

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """V Vᵀ g for g of shape (d,), or g − V Vᵀ g for the complement."""
        inside = (self.V @ (self.V.T @ g.to(self.V.dtype))).to(g.dtype)
        return g - inside if self.complement else inside

    def coordinates(self, G: torch.Tensor) -> torch.Tensor:
        """Vᵀ g for each row of G (B, d) -> (B, r)."""
        return G.to(self.V.dtype) @ self.V
