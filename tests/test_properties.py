"""Properties that hold for every shape, checked on shapes hypothesis draws (small, so they are fast)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spectral.store as store
from spectral.analyse import principal_components
from spectral.store.format import STORAGE_DTYPES, from_storage, to_storage

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 40),
    shard_rows=st.integers(1, 13),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_store_round_trip_for_any_shape_dtype_and_shard_size(n, d, shard_rows, dtype, seed):
    """Rows come back as the storage dtype rounded them (exactly), by rows, columns and blocks alike."""
    H = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    expected = from_storage(to_storage(H, dtype), dtype)  # what the storage dtype rounds H to
    root = Path(tempfile.mkdtemp(prefix="spectral-prop-"))
    try:
        layout = [{"name": "w", "shape": [d], "offset": 0, "numel": d}]
        w = store.StoreWriter.create(
            root / "run", layout=layout, streams=["clipped"], dtype=dtype, shard_rows=shard_rows, meta={}
        )
        for i, row in enumerate(H):
            w.append(i, {"clipped": row}, {"loss": float(i)})
        w.commit(status="complete")
        w.close()
        s = store.open(root / "run", verify=True)
        assert s.n_steps == n and len(s.shards("clipped")) == -(-n // shard_rows)
        np.testing.assert_array_equal(s.rows("clipped"), expected)
        np.testing.assert_array_equal(np.hstack([b for _, b in s.iter_column_blocks("clipped", 3)]), expected)
        a, b = sorted(np.random.default_rng(seed).integers(0, n + 1, 2))
        np.testing.assert_array_equal(s.block("clipped", a, b, 0, d), expected[a:b])

        # write_matrix (one shard, written by column blocks) stores the same matrix
        blocks = [(j, min(j + 7, d), H[:, j : min(j + 7, d)]) for j in range(0, d, 7)]
        store.write_matrix(root / "matrix", n, d, blocks, dtype=dtype)
        np.testing.assert_array_equal(store.open(root / "matrix", verify=True).rows("clipped"), expected)
        assert STORAGE_DTYPES[dtype] == s.shards("clipped")[0][2].dtype
    finally:
        shutil.rmtree(root)


@pytest.mark.filterwarnings("ignore:the trajectory has rank")  # rank < k on purpose
@FAST
@given(
    n=st.integers(2, 25),
    d=st.integers(2, 60),
    rank=st.integers(1, 25),
    k=st.integers(1, 25),
    method=st.sampled_from(["gram", "lanczos", "randomized"]),
    seed=st.integers(0, 2**16),
)
def test_eigenpairs_match_dense_numpy_for_any_shape_and_rank(n, d, rank, k, method, seed):
    """Top-k eigenpairs of HᵀH against numpy.linalg.svd, including rank-deficient H and k ≥ rank."""
    rng = np.random.default_rng(seed)
    rank, k = min(rank, n, d), min(k, n, d)
    # singular values between 1 and 0.05 (well above the Gram's resolution), exactly zero beyond the rank
    H = (rng.standard_normal((n, rank)) * np.linspace(1.0, 0.05, rank)) @ rng.standard_normal((rank, d))
    _, sv, Vt = np.linalg.svd(H, full_matrices=False)
    spec = principal_components(H, k, method=method, n_iter=20, oversample=n)
    m = len(spec.eigenvalues)
    assert m == min(k, rank)  # the nonzero pairs, never a zero-norm component
    assert np.all(np.isfinite(spec.eigenvalues)) and np.all(np.isfinite(spec.residuals))
    np.testing.assert_allclose(spec.eigenvalues, sv[:m] ** 2, rtol=1e-6, atol=1e-9 * sv[0] ** 2)
    # the same directions where the eigenvalue is separated from its neighbours (else only the span is defined)
    lam = sv**2
    gap = np.minimum(np.abs(np.diff(lam, prepend=np.inf)), np.abs(np.diff(lam, append=-np.inf)))[:m] / lam[0]
    cos = np.abs(np.sum(np.asarray(spec.components, dtype=np.float64) * Vt[:m].T, axis=0))
    np.testing.assert_allclose(cos[gap > 1e-2], 1.0, atol=1e-4)
