"""Every option a stage config carries reaches the computation: each field set to a non-default value
changes the output the way calling the underlying function directly with that value does."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import spectral.store as store_mod
from spectral.analyse import AnalyseConfig, analyse, rlc
from spectral.report import ReportConfig, fits, report

N, D = 40, 900


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A store with two streams: clipped (power-law spectrum) and private (clipped + noise)."""
    root = tmp_path_factory.mktemp("options") / "run"
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((N, N)))
    V, _ = np.linalg.qr(rng.standard_normal((D, N)))
    j = np.arange(1, N + 1)
    H = ((U * (j**-0.6 * (1 + 0.3 * np.sin(j)))) @ V.T).astype(np.float32)  # not a pure power law
    P = H + np.random.default_rng(1).standard_normal(H.shape).astype(np.float32) * 0.01
    layout = [{"name": "w", "shape": [D], "offset": 0, "numel": D}]
    w = store_mod.StoreWriter.create(
        root, layout=layout, streams=["clipped", "private"], dtype="float32", shard_rows=16, meta={}, tile_cols=128
    )
    for t in range(N):
        w.append(t, {"clipped": H[t], "private": P[t]}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return root, H.astype(np.float64), P.astype(np.float64)


def eig(X, centered=False):
    X = X - X.mean(0) if centered else X
    return np.linalg.svd(X, compute_uv=False) ** 2


def read(out, name):
    return json.loads((out / name).read_text()) if name.endswith(".json") else pd.read_csv(out / name)


ANALYSE_CASES = {
    "stream": dict(stream="private"),
    "k": dict(k=7),
    "method": dict(k=7, method="lanczos"),
    "centered": dict(k=7, centered=True),
    "max_memory": dict(k=7, max_memory=60_000),
    "holdout": dict(k=7, holdout="alternate"),
    "slq": dict(k=7, slq=True),
    "iterations": dict(k=7, method="seedcode", iterations=3),
}


def test_every_analyse_field_is_covered():
    covered = set(ANALYSE_CASES) | {"dask", "batch_size", "batch_estimator"}  # test_distributed, test_batch
    assert covered == {f.name for f in dataclasses.fields(AnalyseConfig)}


@pytest.mark.parametrize("field", sorted(ANALYSE_CASES))
def test_analyse_options_reach_the_computation(run, tmp_path, field):
    root, H, P = run
    config = AnalyseConfig(**ANALYSE_CASES[field])
    out = tmp_path / field
    spec = analyse(root, config, out=out, progress=False, device="cpu")
    summary = read(out, "summary.json")
    assert summary["config"][field] == getattr(config, field)
    if field == "stream":
        np.testing.assert_allclose(spec.eigenvalues, eig(P)[: len(spec.eigenvalues)], rtol=1e-8)
        assert not np.allclose(spec.eigenvalues, eig(H)[: len(spec.eigenvalues)], rtol=1e-8)
    elif field == "k":
        assert spec.k == 7 and len(read(out, "spectrum.csv")) == 7
    elif field == "method":
        assert summary["method"] == "lanczos"
        np.testing.assert_allclose(spec.eigenvalues, eig(H)[:7], rtol=1e-8)
    elif field == "centered":
        assert summary["centered"] is True
        np.testing.assert_allclose(spec.eigenvalues, eig(H, centered=True)[:7], rtol=1e-8)
    elif field == "max_memory":
        assert summary["io"]["buffer_bytes"] <= 60_000 < D * N * 8
    elif field == "holdout":
        held = read(out, "rlc_held_out.csv")
        ref, _ = rlc.held_out_from_gram(H @ H.T, 7, split="alternate")
        np.testing.assert_allclose(held["rms"], rlc.summarize(ref)["rms"], rtol=1e-5)
        half, _ = rlc.held_out_from_gram(H @ H.T, 7, split="half")
        assert not np.allclose(held["rms"], rlc.summarize(half)["rms"], rtol=1e-3)
    elif field == "slq":
        slq = read(out, "density_slq.csv")
        assert {"eigenvalue", "density"} <= set(slq.columns)
    elif field == "iterations":
        assert summary["method"] == "seedcode" and summary["iterations"] == 3


def test_report_options_reach_the_computation(run, tmp_path):
    root, H, _ = run
    analyse(root, AnalyseConfig(k=20), progress=False, device="cpu")
    analyse(root, AnalyseConfig(k=20, stream="private"), progress=False, device="cpu")
    base = report(root, ReportConfig(fit_range=(1, 20)), out=tmp_path / "a")["fits"]
    ranged = report(root, ReportConfig(fit_range=(2, 10)), out=tmp_path / "b")["fits"]
    sv = np.sqrt(eig(H)[:20])
    assert ranged["spectrum"]["range"] == [2, 10]
    assert ranged["spectrum"]["slope"] == pytest.approx(fits.spectrum_fit(sv, (2, 10))["slope"], rel=1e-6)
    assert base["spectrum"]["slope"] != pytest.approx(ranged["spectrum"]["slope"], rel=1e-3)
    private = report(root, ReportConfig(stream="private", fit_range=(1, 20)), out=tmp_path / "c")["fits"]
    assert private["spectrum"]["slope"] != pytest.approx(base["spectrum"]["slope"], rel=1e-6)
    g0 = report(root, ReportConfig(fit_range=(1, 20), g0=0.1), out=tmp_path / "d")["fits"]
    a, b = base["dimension_factor_at_d"]["held-out"], g0["dimension_factor_at_d"]["held-out"]
    assert a["rlc_factor"] != pytest.approx(b["rlc_factor"], rel=1e-3)
