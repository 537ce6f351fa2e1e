"""The analyse stage on a Dask cluster: the same products as :class:`TrajectoryMatrix`, computed
blockwise by dask workers over the store's ``to_dask`` view (shards × column blocks, read where
they are computed). Every method of :func:`spectral.analyse.principal_components` runs on it
unchanged: the n×n work (eigh, Rayleigh–Ritz, certificates) stays on the client, each d-sized
pass is one dask graph whose partial n×n (or n×k) products are summed by the scheduler.

Cost model per pass over H (n × d, float32 on disk): bytes read = 4·n·d in total, split over the
workers; FLOPs = 2·n²·d for the Gram pass (2·n·d·k for the eigenvector pass); network = one n×n
float64 partial per column-block chunk reduced in a tree, i.e. about 8·n² bytes per worker per pass.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpectralError


def connect(spec: str):
    """A ``dask.distributed.Client`` for ``local:N`` (a LocalCluster of N single-threaded worker
    processes on this machine) or a scheduler address ``tcp://HOST:PORT``."""
    from dask.distributed import Client, LocalCluster

    if spec.startswith("local:"):
        try:
            workers = int(spec.split(":", 1)[1])
        except ValueError:
            raise SpectralError(f"--dask {spec!r}: expected local:N with N workers") from None
        return Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
    try:
        return Client(spec, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise SpectralError(f"cannot reach the dask scheduler at {spec}: {exc}") from None


class NpyChunkWriter:
    """Writes array chunks into an existing .npy file from any worker (``dask.array.store`` target).
    Opens the file per chunk, so nothing but the path travels to the workers."""

    def __init__(self, path):
        self.path = str(path)

    def __setitem__(self, key, value):
        out = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        out[key] = value
        out.flush()
        del out


class DaskTrajectoryMatrix:
    """H (n, d) from a store stream, with every product computed on a dask cluster."""

    def __init__(self, store, stream: str = "clipped", rows=None, client=None, progress: bool = False):
        if isinstance(store, np.ndarray):
            raise SpectralError("the dask backend reads a store; pass the store, not an in-memory array")
        self.source, self.stream, self.client = store, stream, client
        self.H = store.to_dask(stream)
        n_all, self.d = self.H.shape
        self.rows = np.arange(n_all) if rows is None else np.asarray(rows)
        if rows is not None:
            self.H = self.H[self.rows]
        self.n = len(self.rows)
        if self.n == 0 or self.d == 0:
            raise SpectralError(f"the trajectory is empty (n={self.n}, d={self.d})")
        self.H64 = self.H.astype(np.float64)
        self.passes = 0
        self.progress = progress

    @property
    def shape(self) -> tuple:
        return (self.n, self.d)

    @property
    def identity(self) -> str:
        m = self.source.manifest
        return f"{self.source.root.resolve()}|{m['created']}|{m['n_steps']}|{self.stream}|dask"

    def _compute(self, *arrays):
        import dask

        self.passes += 1
        return dask.compute(*arrays)

    def gram(self, checkpoint=None, every_s: float = 60.0) -> np.ndarray:
        """H Hᵀ (n, n) float64: per column block a partial product, summed by the scheduler."""
        (G,) = self._compute(self.H64 @ self.H64.T)
        return G

    def rmatmat(self, U, out=None, scale=None, dtype=np.float64) -> np.ndarray:
        """Hᵀ U diag(scale) (d, k); with ``out`` (a .npy memmap) the workers write their chunks into it."""
        import dask.array as da

        U = np.asarray(U if scale is None else U * scale, dtype=dtype)
        V = self.H.astype(dtype).T @ U
        self.passes += 1
        if out is None:
            return V.compute()
        if not isinstance(out, np.memmap):
            raise SpectralError("the dask backend writes components into a .npy memmap (components_out)")
        out.flush()
        da.store(V, NpyChunkWriter(out.filename), lock=False)
        return out

    def matmat(self, V) -> np.ndarray:
        """H V (n, k) for V (d, k); V is sent to the workers in column-block chunks."""
        import dask.array as da

        Vd = da.from_array(np.asarray(V, dtype=np.float64), chunks=(self.H.chunks[1], V.shape[1]))
        (out,) = self._compute(self.H64 @ Vd)
        return out

    def hht(self, Q: np.ndarray) -> np.ndarray:
        (out,) = self._compute(self.H64 @ (self.H64.T @ np.asarray(Q, dtype=np.float64)))
        return out

    def norms(self) -> tuple[np.ndarray, float]:
        sq, mean = self._compute((self.H64**2).sum(axis=1), self.H64.mean(axis=0))
        return sq, float(np.sum(mean**2))
