"""Principal angles between two runs (python -m spectral.compare) against scipy on dense components."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from conftest import run_main
from helpers import write_store

import spectral.store as store_mod
from spectral.compare import compare


def two_runs(tmp_path, d=400, n_a=30, n_b=25):
    """Two trajectories sharing a 5-dimensional subspace, each with its own other directions."""
    rng = np.random.default_rng(0)
    shared = np.linalg.qr(rng.standard_normal((d, 5)))[0]
    H_a = rng.standard_normal((n_a, 5)) * [5, 4, 3, 2, 1] @ shared.T + 0.1 * rng.standard_normal((n_a, d))
    H_b = rng.standard_normal((n_b, 5)) * [5, 4, 3, 2, 1] @ shared.T + 0.1 * rng.standard_normal((n_b, d))
    write_store(tmp_path / "a", H_a.astype(np.float32))
    write_store(tmp_path / "b", H_b.astype(np.float32))
    return H_a.astype(np.float32).astype(float), H_b.astype(np.float32).astype(float)


def top(H, k):
    return np.linalg.svd(H, full_matrices=False)[2][:k].T


def test_cosines_equal_scipy_subspace_angles_on_dense_components(tmp_path):
    H_a, H_b = two_runs(tmp_path)
    res = compare(tmp_path / "a", tmp_path / "b", ks=(3, 10), progress=False, device="cpu")
    for r in res["angles"]:
        Va, Vb = top(H_a, r["k"]), top(H_b, r["k"])
        expected = np.sort(np.cos(scipy.linalg.subspace_angles(Va, Vb)))[::-1]
        np.testing.assert_allclose(r["cosines"], expected, atol=1e-6)
        captured = np.sum((H_a @ Vb) ** 2) / np.sum(H_a**2)
        assert r["energy_a_in_b"] == pytest.approx(captured, rel=1e-6)
        assert r["energy_b_in_a"] == pytest.approx(np.sum((H_b @ Va) ** 2) / np.sum(H_b**2), rel=1e-6)
    assert res["angles"][0]["cosines"][2] > 0.9  # the shared subspace is found
    written = json.loads((tmp_path / "a" / "analysis" / "clipped" / "compare" / "b.json").read_text())
    assert written["angles"][1]["k"] == 10 and (tmp_path / "a" / "analysis" / "clipped" / "compare" / "b.png").is_file()


def test_two_streams_of_one_run(tmp_path):
    rng = np.random.default_rng(1)
    H, P = rng.standard_normal((12, 50)), rng.standard_normal((12, 50))
    layout = [{"name": "w", "shape": [50], "offset": 0, "numel": 50}]
    w = store_mod.StoreWriter.create(tmp_path / "r", layout=layout, streams=["clipped", "probe64"], dtype="float32",
                                     shard_rows=5, meta={})  # fmt: skip
    for t in range(12):
        w.append(t, {"clipped": H[t].astype(np.float32), "probe64": P[t].astype(np.float32)}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    res = compare(tmp_path / "r", tmp_path / "r", stream_b="probe64", ks=(4,), progress=False, device="cpu")
    H, P = H.astype(np.float32).astype(float), P.astype(np.float32).astype(float)
    expected = np.sort(np.cos(scipy.linalg.subspace_angles(top(H, 4), top(P, 4))))[::-1]
    np.testing.assert_allclose(res["angles"][0]["cosines"], expected, atol=1e-6)
    assert (tmp_path / "r" / "analysis" / "clipped" / "compare" / "r@probe64.json").is_file()


def test_runs_of_other_parameters_are_one_clear_error(tmp_path):
    two_runs(tmp_path)
    write_store(tmp_path / "c", np.ones((6, 300), np.float32))
    result = run_main("spectral.compare", tmp_path / "a", tmp_path / "c", "--no-progress")
    assert result.returncode == 2 and "different d" in result.stderr and "Traceback" not in result.stderr
    result = run_main("spectral.compare", tmp_path / "a", tmp_path / "b", "--k", "40", "--no-progress")
    assert result.returncode == 2 and "exceeds the rank" in result.stderr
