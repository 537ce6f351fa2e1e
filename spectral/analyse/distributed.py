"""The analyse stage on a Dask cluster: connecting to one, and writing components from the workers.

The passes themselves are :class:`~spectral.analyse.matrix.TrajectoryMatrix`'s, run through
:class:`~spectral.analyse.backends.DaskOps` over the store's ``to_dask`` view (shards × column
blocks, read where they are computed). Every method of :func:`spectral.analyse.principal_components`
runs on it unchanged: the n×n work (eigh, Rayleigh–Ritz, certificates) stays on the client, each
d-sized pass is one dask graph whose partial n×n (or n×k) products are summed by the scheduler.

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
