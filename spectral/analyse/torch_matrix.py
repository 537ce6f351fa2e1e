"""The trajectory matrix's passes as torch matmuls on a device (a GPU; the CPU in the tests).

Each column block is read from the store as float32 (the stored precision) into a pinned host
buffer by the read-ahead thread, copied to the device, and widened to float64 there, so every
product accumulates in float64 exactly as the numpy path does: the eigenvalues agree with dense
``numpy.linalg`` to the same ~1e-10 relative tolerance the CPU tests hold. Results come back to the
host as numpy arrays, so the n x n eigenproblem and the certificates are shared with the CPU path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import resolve_device
from .matrix import TrajectoryMatrix, load_checkpoint, save_checkpoint


class TorchTrajectoryMatrix(TrajectoryMatrix):
    """:class:`TrajectoryMatrix` whose products run with torch on ``device``."""

    def __init__(
        self, source, stream: str = "clipped", rows=None, max_memory: int | None = None, progress=False, device="cuda"
    ):
        super().__init__(source, stream, rows=rows, max_memory=max_memory, progress=progress)
        self.device = resolve_device(device)
        self._rows = torch.as_tensor(self.rows, device=self.device)

    def device_blocks(self, desc: str = "pass", start_col: int = 0):
        """Yield ``(start, stop, H[:, start:stop])`` as float64 tensors on the device; one call = one pass."""
        self.passes += 1
        spans = [(a, min(a + self.block_cols, self.d)) for a in range(start_col, self.d, self.block_cols)]
        bar = tqdm(total=len(spans), desc=desc, unit="block", disable=not self.progress, leave=False)
        if isinstance(self.source, np.ndarray):
            n_all = self.source.shape[0]
            read = (
                lambda i: torch.from_numpy(
                    np.ascontiguousarray(  # noqa: E731
                        self.source[:, spans[i][0] : spans[i][1]], dtype=np.float32
                    )
                )
            )
        else:
            n_all = self.source.n_steps
            pin = self.device.type == "cuda"
            buffers = [
                torch.empty(n_all * self.block_cols, dtype=torch.float32, pin_memory=pin)
                for _ in range(min(2, len(spans)))
            ]

            def read(i):
                start, stop = spans[i]
                out = buffers[i % 2][: n_all * (stop - start)].view(n_all, stop - start)
                self.source.block(self.stream, 0, n_all, start, stop, dtype=np.float32, out=out.numpy())
                return out

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read, 0) if spans else None
            for i, (start, stop) in enumerate(spans):
                host = ahead.result()
                # a blocking copy: the buffer is free for the read-ahead once it returns
                block = host.to(self.device).double()
                ahead = pool.submit(read, i + 1) if i + 1 < len(spans) else None
                yield start, stop, block if self.n == n_all else block[self._rows]
                bar.update()
        bar.close()

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device)

    def gram(self, checkpoint=None, every_s: float = 60.0) -> np.ndarray:
        import time

        G, start = torch.zeros((self.n, self.n), dtype=torch.float64, device=self.device), 0
        saved = load_checkpoint(checkpoint, self.identity) if checkpoint else None
        if saved is not None:
            G, start = self._tensor(saved["array"]), saved["next_col"]
        if start >= self.d:
            return G.cpu().numpy()
        last = time.monotonic()
        for _, stop, B in self.device_blocks("gram", start_col=start):
            G += B @ B.T
            if checkpoint and (time.monotonic() - last >= every_s or stop == self.d):
                save_checkpoint(checkpoint, self.identity, G.cpu().numpy(), next_col=stop)
                last = time.monotonic()
        return G.cpu().numpy()

    def rmatmat(self, U, out=None, scale=None, dtype=np.float64) -> np.ndarray:
        U = self._tensor(U if scale is None else U * scale)
        out = np.empty((self.d, U.shape[1]), dtype=dtype) if out is None else out
        for start, stop, B in self.device_blocks("H^T U"):
            out[start:stop] = (B.T @ U).cpu().numpy().astype(dtype, copy=False)
        return out

    def matmat(self, V) -> np.ndarray:
        out = torch.zeros((self.n, V.shape[1]), dtype=torch.float64, device=self.device)
        for start, stop, B in self.device_blocks("H V"):
            out += B @ self._tensor(V[start:stop])
        return out.cpu().numpy()

    def hht(self, Q) -> np.ndarray:
        Q = self._tensor(Q)
        out = torch.zeros_like(Q)
        for _, _, B in self.device_blocks("H H^T Q"):
            out += B @ (B.T @ Q)
        return out.cpu().numpy()

    def norms(self) -> tuple[np.ndarray, float]:
        sq = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        mean_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for _, _, B in self.device_blocks("norms"):
            sq += (B * B).sum(1)
            mean_sq += (B.mean(0) ** 2).sum()
        return sq.cpu().numpy(), float(mean_sq)
