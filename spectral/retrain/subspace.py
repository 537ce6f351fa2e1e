"""A top-r gradient subspace V_r (d, r) with orthonormal columns, and the two thin products it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import layout
from ..errors import SpectralError


class Subspace:
    """span(V) for V of shape (d, r) with orthonormal columns.

    ``project(g)`` = V (Vᵀ g): two thin matrix-vector products, O(d r) per step.
    """

    def __init__(self, V):
        V = torch.from_numpy(np.array(V, dtype=np.float32)) if isinstance(V, np.ndarray) else torch.as_tensor(V)
        if V.ndim != 2 or V.shape[1] > V.shape[0]:
            raise SpectralError(f"a subspace basis must have shape (d, r) with r <= d, got {tuple(V.shape)}")
        self.V = V.float().contiguous()

    def to(self, device) -> Subspace:
        """The same subspace with its basis on ``device``."""
        return self if self.V.device == torch.device(device) else Subspace(self.V.to(device))

    @property
    def d(self) -> int:
        return self.V.shape[0]

    @property
    def rank(self) -> int:
        return self.V.shape[1]

    @classmethod
    def from_analysis(cls, directory, rank: int) -> Subspace:
        """The top-``rank`` components saved by ``python -m spectral.analyse`` (components.npy, d x k)."""
        path = Path(directory) / layout.COMPONENTS
        if not path.is_file():
            raise SpectralError(f"{directory} has no {layout.COMPONENTS}; run python -m spectral.analyse first")
        try:
            components = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SpectralError(f"{path} is not a readable .npy array ({exc})") from None
        if components.ndim != 2 or not 1 <= rank <= components.shape[1]:
            raise SpectralError(
                f"rank {rank} is not available: {path} holds {components.shape[1] if components.ndim == 2 else 0} components"
            )
        return cls(np.asarray(components[:, :rank]))

    @classmethod
    def random(cls, d: int, rank: int, seed: int) -> Subspace:
        """A uniformly random ``rank``-dimensional subspace of R^d (QR of a Gaussian d x rank matrix): the
        control that tells "the top directions matter" from "any r directions would do"."""
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(d, rank, generator=g))
        return cls(q * torch.sign(torch.diagonal(r)))  # signs fixed: the same seed gives the same basis

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """V Vᵀ g for g of shape (d,)."""
        return (self.V @ (self.V.T @ g.to(self.V.dtype))).to(g.dtype)

    def coordinates(self, G: torch.Tensor) -> torch.Tensor:
        """Vᵀ g for each row of G (B, d) -> (B, r)."""
        return G.to(self.V.dtype) @ self.V
