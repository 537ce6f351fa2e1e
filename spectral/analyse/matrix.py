"""A gradient trajectory as a matrix H of shape (n_steps, d), read in column blocks.

Every product the analyse stage needs is one sequential pass over column blocks of H:
``gram`` (H Hᵀ), ``rmatmat`` (Hᵀ U, written block by block), ``matmat`` (H V) and
``hht`` (H Hᵀ Q). Column blocks of a row-sharded store are read as contiguous runs of each
row; accumulation is in float64. ``passes`` counts full reads of the data.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import SpectralError
from ..store import atomic_write

BLOCK_BYTES = 128 * 2**20


def default_memory() -> int:
    """Bytes the analyse stage may use when not told: a quarter of the memory available now."""
    import psutil

    return int(psutil.virtual_memory().available // 4)


def trajectory_matrix(source, stream="clipped", rows=None, max_memory=None, progress=False, client=None, device=None):
    """The matrix a solver works on: ``source`` itself if it is one already; the dask version with a
    ``dask.distributed`` client; the torch version when ``device`` resolves to a GPU; else numpy.

    The ``auto`` rule: CUDA when torch sees it, else the CPU (numpy, today's results bit for bit).
    """
    if isinstance(source, TrajectoryMatrix):
        return source
    if client is not None:
        from .distributed import DaskTrajectoryMatrix

        return DaskTrajectoryMatrix(source, stream, rows=rows, client=client, progress=progress)
    if device is not None:
        from ..device import resolve_device

        device = resolve_device(device)
        if device.type != "cpu":
            from .torch_matrix import TorchTrajectoryMatrix

            return TorchTrajectoryMatrix(
                source, stream, rows=rows, max_memory=max_memory, progress=progress, device=device
            )
    return TrajectoryMatrix(source, stream, rows=rows, max_memory=max_memory, progress=progress)


class TrajectoryMatrix:
    """H (n, d) from a :class:`spectral.store.Store` stream or an in-memory array.

    Parameters
    ----------
    source : Store or ndarray of shape (n, d)
    stream : stream name (for a Store)
    rows : optional index array selecting a subset of steps (e.g. a held-out split)
    max_memory : bytes for block buffers; sets the column block width (default: a quarter
        of the available RAM)
    progress : show a progress bar per pass
    """

    def __init__(self, source, stream: str = "clipped", rows=None, max_memory: int | None = None, progress=False):
        self.source, self.stream, self.progress = source, stream, progress
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise SpectralError(f"a trajectory matrix must be 2-D, got shape {source.shape}")
            n_all, self.d = source.shape
        else:
            source.check_stream(stream)
            n_all, self.d = source.n_steps, source.d
        self.rows = np.arange(n_all) if rows is None else np.asarray(rows)
        self.n = len(self.rows)
        if self.n == 0 or self.d == 0:
            raise SpectralError(f"the trajectory is empty (n={self.n}, d={self.d})")
        budget = default_memory() if max_memory is None else int(max_memory)
        # two float64 read buffers (one being filled ahead) and a product of the same size;
        # blocks above ~128 MiB buy no GEMM speed, only page faults
        self.block_cols = int(np.clip(min(budget // 24, BLOCK_BYTES // 8) // n_all, 1, self.d))
        self.passes = 0

    @property
    def shape(self) -> tuple:
        return (self.n, self.d)

    @cached_property
    def identity(self) -> str:
        """What the data is: store, its committed steps, stream and row subset (for checkpoints)."""
        if isinstance(self.source, np.ndarray):
            src = hashlib.sha256(memoryview(np.ascontiguousarray(self.source)).cast("B")).hexdigest()
        else:
            m = self.source.manifest
            src = f"{self.source.root.resolve()}|{m['created']}|{m['n_steps']}"
        rows = hashlib.sha256(self.rows.astype(np.int64).tobytes()).hexdigest()
        return f"{src}|{self.stream}|{rows}|{self.d}"

    def blocks(self, desc: str = "pass", start_col: int = 0, dtype=np.float64):
        """Yield ``(start, stop, H[:, start:stop] as dtype)``; one call = one pass.

        A store's blocks are read by a background thread one block ahead, into two buffers
        used in turn: a yielded block is valid until the next one is requested.
        """
        self.passes += 1
        spans = [(a, min(a + self.block_cols, self.d)) for a in range(start_col, self.d, self.block_cols)]
        bar = tqdm(total=len(spans), desc=desc, unit="block", disable=not self.progress, leave=False)
        if isinstance(self.source, np.ndarray):
            for start, stop in spans:
                yield start, stop, np.asarray(self.source[self.rows, start:stop], dtype=dtype)
                bar.update()
            bar.close()
            return
        n_all = self.source.n_steps
        buffers = [np.empty(n_all * self.block_cols, dtype=dtype) for _ in range(min(2, len(spans)))]

        def read(i):
            start, stop = spans[i]
            out = buffers[i % 2][: n_all * (stop - start)].reshape(n_all, stop - start)
            self.source.block(self.stream, 0, n_all, start, stop, dtype=dtype, out=out)
            return out if self.n == n_all else out[self.rows]

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read, 0) if spans else None
            for i, (start, stop) in enumerate(spans):
                block = ahead.result()
                ahead = pool.submit(read, i + 1) if i + 1 < len(spans) else None
                yield start, stop, block
                bar.update()
        bar.close()

    # ------------------------------------------------------------------ products
    def gram(self, checkpoint: Path | None = None, every_s: float = 60.0) -> np.ndarray:
        """H Hᵀ, shape (n, n), float64.

        With ``checkpoint`` (a path stem), the partial sum is saved every ``every_s`` seconds
        and at the end; a later call on the same data continues from it (or reuses it whole).
        """
        G, start = np.zeros((self.n, self.n)), 0
        saved = load_checkpoint(checkpoint, self.identity) if checkpoint else None
        if saved is not None:
            G, start = saved["array"], saved["next_col"]
        if start >= self.d:
            return G
        last = time.monotonic()
        for _, stop, B in self.blocks("gram", start_col=start):
            G += B @ B.T
            if checkpoint and (time.monotonic() - last >= every_s or stop == self.d):
                save_checkpoint(checkpoint, self.identity, G, next_col=stop)
                last = time.monotonic()
        return G

    def rmatmat(self, U: np.ndarray, out=None, scale=None, dtype=np.float64) -> np.ndarray:
        """Hᵀ U diag(scale) (d, k), written block by block into ``out`` (e.g. a memmap).

        ``dtype=np.float32`` halves the work of this tall-skinny product where the result is
        stored in float32 anyway (the eigenvector pass).
        """
        U = np.asarray(U if scale is None else U * scale, dtype=dtype)
        out = np.empty((self.d, U.shape[1]), dtype=dtype) if out is None else out
        for start, stop, B in self.blocks("H^T U", dtype=dtype):
            out[start:stop] = B.T @ U
        return out

    def matmat(self, V) -> np.ndarray:
        """H V (n, k) for V of shape (d, k) (may be a memmap; read block by block)."""
        out = np.zeros((self.n, V.shape[1]))
        for start, stop, B in self.blocks("H V"):
            out += B @ np.asarray(V[start:stop], dtype=np.float64)
        return out

    def hht(self, Q: np.ndarray) -> np.ndarray:
        """H Hᵀ Q (n, l) in one pass, without forming H Hᵀ."""
        out = np.zeros_like(Q, dtype=np.float64)
        for _, _, B in self.blocks("H H^T Q"):
            out += B @ (B.T @ Q)
        return out

    def norms(self) -> tuple[np.ndarray, float]:
        """(‖g_t‖² for every step (n,), ‖mean step‖²) in one pass."""
        sq, mean_sq = np.zeros(self.n), 0.0
        for _, _, B in self.blocks("norms"):
            sq += np.einsum("ij,ij->i", B, B)
            mean_sq += float(np.sum(B.mean(axis=0) ** 2))
        return sq, mean_sq


def save_checkpoint(stem: Path, identity: str, array: np.ndarray, **state) -> None:
    """Atomically save ``array`` (.npy) and ``state`` (.json) for the data named by ``identity``."""
    stem = Path(stem)
    atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, array, allow_pickle=False))
    atomic_write(stem.with_suffix(".json"), lambda f: f.write(json.dumps({"identity": identity, **state}).encode()))


def load_checkpoint(stem: Path, identity: str) -> dict | None:
    """The saved state if it belongs to the same data, else None (a stale checkpoint is ignored)."""
    stem = Path(stem)
    try:
        state = json.loads(stem.with_suffix(".json").read_text())
        if state.get("identity") != identity:
            return None
        return {**state, "array": np.load(stem.with_suffix(".npy"), allow_pickle=False)}
    except (OSError, ValueError):
        return None
