"""The analyse stage single-process vs on a local dask cluster, on the same synthetic store.

What a 2-core machine can show: that the distributed path gives the same answer, what its
scheduling and serialisation overhead costs, and how memory splits across workers. What it cannot
show: speed-up from more machines — 2 workers on 2 cores compete with each other (and with BLAS
threads) for the same cores and the same page cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..layout import RunDir
from .analyse import build
from .memory import PeakRSS


def _worker_rss_mib() -> float:
    # ru_maxrss would be inherited from the forking parent, so report the worker's resident set now
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run(n: int, d: int, k: int, workers: int, workdir: Path) -> str:
    from dask.distributed import Client, LocalCluster

    from ..analyse import principal_components
    from ..store import open as open_store

    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "store"
    if not RunDir(root).has_store():
        build(root, n, d, 1.0)
    store = open_store(root)
    rows = []
    with PeakRSS(interval=0.01) as mem:
        t0 = time.perf_counter()
        local = principal_components(store, k, method="gram", components_out=workdir / "V_local.npy")
        rows.append(("single process (gram)", time.perf_counter() - t0, mem.peak / 2**20, "", local))
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)  # workers up before timing
        with PeakRSS(interval=0.01) as mem:
            t0 = time.perf_counter()
            remote = principal_components(store, k, method="gram", client=client, components_out=workdir / "V_dask.npy")
            seconds = time.perf_counter() - t0
        peaks = client.run(_worker_rss_mib)
        rows.append(
            (
                f"dask LocalCluster, {workers} workers (gram)",
                seconds,
                mem.peak / 2**20,
                " / ".join(f"{v:.0f}" for v in peaks.values()),
                remote,
            )
        )
    err = float(np.max(np.abs(remote.eigenvalues - local.eigenvalues) / local.eigenvalues))
    lines = [
        f"synthetic trajectory n={n}, d={d:,} ({n * d * 4 / 2**30:.2f} GiB float32), k={k}",
        "",
        "| path | seconds | client peak RSS MiB | worker RSS after MiB | passes |",
        "|---|---|---|---|---|",
    ]
    for name, s, peak, wpeak, spec in rows:
        lines.append(f"| {name} | {s:.3g} | {peak:.0f} | {wpeak} | {spec.passes} |")  # 3 figures: a small run takes ms
    lines += [
        "",
        f"dask / single-process time: {rows[1][1] / rows[0][1]:.2f}x; max relative eigenvalue difference {err:.1e}",
        f"network per pass ≈ 8·n² = {8 * n * n / 2**20:.1f} MiB per partial Gram chunk result",
    ]
    return "\n".join(lines)
