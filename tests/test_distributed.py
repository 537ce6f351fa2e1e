"""The analyse stage on a 2-worker dask LocalCluster equals the single-process path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import power_law_trajectory, write_store

from spectral.analyse import principal_components, rlc

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client(spawning):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dask_view_reads_the_store_without_copying(tmp_path, dtype):
    H = power_law_trajectory(n=40, d=900)
    s = write_store(tmp_path / "s", H, dtype=dtype)  # 7-row shards: 6 row chunks
    view = s.to_dask("clipped", block_cols=128)
    assert view.shape == H.shape and len(view.chunks[0]) == 6 and view.chunks[1][0] == 128
    np.testing.assert_array_equal(view.compute(), s.rows("clipped"))
    np.testing.assert_array_equal(view[5:17, 100:300].compute(), s.rows("clipped")[5:17, 100:300])


@pytest.mark.parametrize("method", ["gram", "randomized", "lanczos"])
def test_dask_path_equals_the_single_process_path(tmp_path, client, method):
    H = power_law_trajectory(n=60, d=2500, seed=2)
    s = write_store(tmp_path / "s", H)
    k = 8
    local = principal_components(s, k, method=method, components_out=tmp_path / "V_local.npy")
    remote = principal_components(s, k, method=method, client=client, components_out=tmp_path / "V_dask.npy")
    np.testing.assert_allclose(remote.eigenvalues, local.eigenvalues, rtol=1e-10)
    V1, V2 = np.load(tmp_path / "V_local.npy"), np.load(tmp_path / "V_dask.npy")  # written by the workers
    np.testing.assert_allclose(np.abs(V2), np.abs(V1), atol=1e-5)  # eigenvector signs may differ
    np.testing.assert_allclose(remote.row_sq_norms, local.row_sq_norms, rtol=1e-10)
    np.testing.assert_allclose(remote.residuals, local.residuals, rtol=1e-3, atol=1e-10)  # same certificate
    assert remote.passes == local.passes


def test_dask_restricted_lipschitz_curves_match(tmp_path, client):
    H = power_law_trajectory(n=50, d=1500, seed=3)
    s = write_store(tmp_path / "s", H)
    G_local, _ = rlc.held_out(s, 10, split="alternate", ks=[0, 1, 5, 10], method="gram")
    G_dask, _ = rlc.held_out(s, 10, split="alternate", ks=[0, 1, 5, 10], method="gram", client=client)
    pd.testing.assert_frame_equal(G_dask, G_local, rtol=1e-6)


def test_cli_with_a_local_cluster(cli, tmp_path):
    H = power_law_trajectory(n=40, d=1200, seed=4)
    s = write_store(tmp_path / "run", H)
    proc = cli("spectral.analyse", s.root, "--k", "5", "--dask", "local:2", "--no-progress", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    ref = principal_components(s, 5)
    np.testing.assert_allclose(np.load(tmp_path / "a" / "eigenvalues.npy"), ref.eigenvalues, rtol=1e-10)
    bad = cli("spectral.analyse", s.root, "--k", "5", "--dask", "local:x", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "local:N" in bad.stderr
