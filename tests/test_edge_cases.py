"""Edge cases that used to end in NaN or a traceback (each test failed before its fix)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run_main
from helpers import power_law_trajectory, write_store

import spectral.store as store
from spectral.analyse import principal_components, rlc
from spectral.errors import SpectralError


def _rank_deficient(n=24, d=300, r=5, seed=0):
    """n rows spanning r directions (repeated rows), plus all-zero rows as empty Poisson batches give."""
    H = power_law_trajectory(n=r, d=d, seed=seed)
    rows = np.vstack([H[np.arange(n - 4) % r], np.zeros((4, d), np.float32)])
    return rows.astype(np.float32)


@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_rank_below_k_returns_the_nonzero_pairs_and_says_so(tmp_path, method):
    H = _rank_deficient()
    s = write_store(tmp_path / "run", H)
    with pytest.warns(UserWarning, match="rank 5 < k = 10"):
        spec = principal_components(s, 10, method=method, n_iter=6)
    assert spec.k == 5 and spec.info["rank"] == 5
    exact = np.linalg.eigvalsh(H.astype(np.float64) @ H.T.astype(np.float64))[::-1][:5]
    np.testing.assert_allclose(spec.eigenvalues, exact, rtol=1e-6)
    for array in (spec.eigenvalues, spec.residuals, spec.captured_energy, np.asarray(spec.components), spec.scores):
        assert np.isfinite(array).all()
    curve = rlc.summarize(rlc.in_sample(spec))
    assert np.isfinite(curve.drop(columns="k").to_numpy()).all()


@pytest.mark.parametrize("centered", [False, True])
def test_held_out_fit_of_a_rank_deficient_trajectory_says_so(centered):
    """The held-out fit keeps the fit rows' nonzero directions only (centring removes one more) and
    its spectrum records the rank, as principal_components does."""
    H = _rank_deficient().astype(np.float64)
    G = H @ H.T
    fit, _ = rlc.split_rows(len(H), "half")
    Hf = H[fit] - (H[fit].mean(0) if centered else 0)
    rank = np.linalg.matrix_rank(Hf)
    G_out, fitted = rlc.held_out_from_gram(G, 10, split="half", centered=centered)
    assert len(fitted.eigenvalues) == rank < 10 and fitted.info["rank"] == rank
    assert "rank" in fitted.info["warning"] and np.isfinite(G_out.to_numpy()).all()


def test_analyse_cli_on_a_rank_deficient_store_warns_and_writes_no_nan(tmp_path):
    s = write_store(tmp_path / "run", _rank_deficient())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_main("spectral.analyse", s.root, "--k", "10", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "warning: the trajectory has rank 5" in result.stderr
    for name in ("spectrum.csv", "rlc_in_sample.csv", "rlc_held_out.csv"):
        text = (s.root / "analysis" / "clipped" / name).read_text().lower()
        assert "nan" not in text and "inf" not in text, name


def test_an_all_zero_trajectory_is_one_clear_error(tmp_path):
    s = write_store(tmp_path / "run", np.zeros((8, 50), np.float32))
    with pytest.raises(SpectralError, match="all zeros"):
        principal_components(s, 3)
    result = run_main("spectral.analyse", s.root, "--k", "3", "--no-progress")
    assert result.returncode == 2 and result.stderr.strip().startswith("error:") and "all zeros" in result.stderr


def test_lanczos_with_k_equal_n_falls_back_to_the_exact_method(tmp_path):
    H = power_law_trajectory(n=12, d=200, seed=3)
    s = write_store(tmp_path / "run", H)
    spec = principal_components(s, 12, method="lanczos")
    assert spec.method == "gram" and "lanczos" in spec.reason
    exact = np.linalg.eigvalsh(H.astype(np.float64) @ H.T.astype(np.float64))[::-1]
    np.testing.assert_allclose(spec.eigenvalues, exact, rtol=1e-8)
    # the held-out curve fits on half the rows: k = n/2 there, through the CLI
    result = run_main("spectral.analyse", s.root, "--k", "6", "--method", "lanczos", "--no-progress")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dtype, value", [("float16", 7e4), ("bfloat16", 3.4e38)])
def test_the_writer_refuses_a_row_its_dtype_would_make_inf(tmp_path, dtype, value):
    layout = [{"name": "w", "shape": [4], "offset": 0, "numel": 4}]
    w = store.StoreWriter.create(
        tmp_path / "run", layout=layout, streams=["clipped"], dtype=dtype, shard_rows=4, meta={}
    )
    w.append(0, {"clipped": np.ones(4, np.float32)}, {"loss": 0.0})
    with pytest.raises(SpectralError, match="cannot hold"):
        w.append(1, {"clipped": np.array([1.0, value, 0.0, 0.0], np.float32)}, {"loss": 0.0})
    w.commit(status="stopped")
    w.close()
    s = store.open(tmp_path / "run")
    assert s.n_steps == 1 and np.isfinite(s.rows("clipped")).all()


def test_collect_stops_before_storing_an_overflowing_float16_row(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    # noise of std sigma*C/B = 1e6 per coordinate: the private row cannot be float16
    result = run_main(
        "spectral.collect",
        out,
        "--model",
        tiny_model,
        "--data",
        tiny_data,
        "--objective",
        "classifier",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--physical-batch-size",
        "8",
        "--noise-multiplier",
        "8e6",
        "--max-grad-norm",
        "1",
        "--dtype",
        "float16",
        "--streams",
        "clipped",
        "private",
        "--eval-every",
        "0",
        "--no-progress",
    )
    assert result.returncode == 2 and "float16" in result.stderr and "Traceback" not in result.stderr
    s = store.open(out)
    assert s.manifest["status"] == "stopped" and s.n_steps == 0
