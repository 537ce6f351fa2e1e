"""Analyse stage against dense numpy.linalg on the same matrices."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import D, N, power_law_trajectory, write_store

from spectral.analyse import principal_components, rlc
from spectral.errors import SpectralError


def largest_angle(A, B) -> float:
    """Largest principal angle (radians) between the column spans of A and B."""
    Qa, _ = np.linalg.qr(np.asarray(A, dtype=np.float64))
    Qb, _ = np.linalg.qr(np.asarray(B, dtype=np.float64))
    s = np.linalg.svd(Qa.T @ Qb, compute_uv=False)
    return float(np.arccos(np.clip(s.min(), -1, 1)))


# tolerance per method: (eigenvalue relative error, largest principal angle in radians)
TOL = {"gram": (1e-6, 1e-3), "randomized": (1e-3, 0.05), "lanczos": (1e-6, 1e-3), "orthiter": (1e-2, 0.2)}


@pytest.mark.parametrize("method", ["gram", "randomized", "lanczos", "orthiter"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_matches_dense_svd(tmp_path, method, dtype):
    s = write_store(tmp_path / "run", power_law_trajectory(), dtype)
    H = s.rows("clipped").astype(np.float64)  # what is stored, widened
    _, sv, Vt = np.linalg.svd(H, full_matrices=False)
    k = 8
    spec = principal_components(s, k, method=method, max_memory=200_000, n_iter=6)
    rel = np.abs(spec.eigenvalues - sv[:k] ** 2) / sv[:k] ** 2
    eig_tol, angle_tol = TOL[method]
    assert rel.max() < eig_tol, (method, rel)
    assert largest_angle(spec.components, Vt[:k].T) < angle_tol
    np.testing.assert_allclose(np.linalg.norm(spec.components, axis=0), 1, atol=1e-5)
    assert spec.total_energy == pytest.approx((sv**2).sum(), rel=1e-9)
    np.testing.assert_allclose(spec.captured_energy, np.cumsum(sv[:k] ** 2) / (sv**2).sum(), rtol=eig_tol * 10)
    if method in ("gram", "lanczos"):
        assert spec.residuals.max() < 1e-6


def test_residual_certificate_is_an_honest_measure(tmp_path):
    """The reported residual equals ‖HᵀH v − λ v‖/λ computed densely from the returned pairs."""
    H = power_law_trajectory().astype(np.float64)
    spec = principal_components(H, 6, method="randomized", n_iter=1, oversample=2)
    V = np.asarray(spec.components, dtype=np.float64)
    dense = np.linalg.norm(H.T @ (H @ V) - V * spec.eigenvalues, axis=0) / spec.eigenvalues
    np.testing.assert_allclose(spec.residuals, dense, rtol=1e-3, atol=1e-9)
    assert spec.residuals.max() > 1e-6  # one cheap iteration is visibly inexact, and the certificate says so


def test_centered_matches_covariance_eigenpairs():
    rng = np.random.default_rng(3)
    H = power_law_trajectory() + rng.standard_normal(D).astype(np.float32) * 0.05  # a shared mean step
    Hc = H.astype(np.float64) - H.mean(axis=0)
    _, sv, Vt = np.linalg.svd(Hc, full_matrices=False)
    for method in ("gram", "randomized"):
        spec = principal_components(H, 5, method=method, centered=True, n_iter=8)
        np.testing.assert_allclose(spec.eigenvalues, sv[:5] ** 2, rtol=1e-4)
        assert largest_angle(spec.components, Vt[:5].T) < 0.05
        assert spec.total_energy == pytest.approx((sv**2).sum(), rel=1e-6)
    # the certificate of a centred solve is measured against the centred matrix (one cheap iteration:
    # visibly inexact, so the comparison is not between two zeros)
    spec = principal_components(H, 5, method="randomized", centered=True, n_iter=1, oversample=2)
    V = np.asarray(spec.components, dtype=np.float64)
    dense = np.linalg.norm(Hc.T @ (Hc @ V) - V * spec.eigenvalues, axis=0) / spec.eigenvalues
    np.testing.assert_allclose(spec.residuals, dense, rtol=1e-3, atol=1e-5)  # atol: float32 components
    assert spec.residuals.max() > 1e-3


def test_bounded_memory_processes_a_store_wider_than_the_budget(tmp_path):
    s = write_store(tmp_path / "run", power_law_trajectory())
    budget = 64 * 1024  # bytes: far less than the 720 kB store
    spec = principal_components(s, 5, method="gram", max_memory=budget, components_out=tmp_path / "components.npy")
    from spectral.analyse.matrix import TrajectoryMatrix

    M = TrajectoryMatrix(s, max_memory=budget)
    assert M.buffer_bytes() <= budget and M.block_cols < D
    full = principal_components(s, 5, method="gram")
    np.testing.assert_allclose(spec.eigenvalues, full.eigenvalues, rtol=1e-10)
    on_disk = np.load(tmp_path / "components.npy", mmap_mode="r")
    np.testing.assert_allclose(on_disk, full.components, atol=1e-6)
    assert spec.passes == 2  # Gram + eigenvectors: two reads of the data


def test_rlc_identity_mean_square_equals_tail_eigenvalues():
    H = power_law_trajectory(slope=0.7)
    spec = principal_components(H, 20, method="gram")
    ks = np.arange(0, 21)
    G = rlc.in_sample(spec, ks)
    _, sv, _ = np.linalg.svd(H.astype(np.float64), full_matrices=False)
    tail = np.array([(sv[k:] ** 2).sum() for k in ks]) / N
    np.testing.assert_allclose((G**2).mean().to_numpy(), tail, rtol=1e-6)
    # against a direct projection for one step
    V = np.asarray(spec.components, dtype=np.float64)
    g = H[7].astype(np.float64)
    assert G.loc[7, 5] == pytest.approx(np.linalg.norm(g - V[:, :5] @ (V[:, :5].T @ g)), rel=1e-6)
    summary = rlc.summarize(G)
    assert list(summary.columns) == ["k", "mean", "rms", "max", "q10", "q50", "q90"]
    assert summary["rms"].is_monotonic_decreasing


def test_held_out_curve_uses_components_from_other_steps():
    H = power_law_trajectory(slope=0.8)
    G, spec = rlc.held_out(H, 10, split="alternate", ks=[0, 5, 10], method="gram")
    assert list(G.index) == list(range(1, N, 2))
    Hf = H[::2].astype(np.float64)
    _, _, Vt = np.linalg.svd(Hf, full_matrices=False)
    P = Vt[:5].T
    g = H[3].astype(np.float64)
    assert G.loc[3, 5] == pytest.approx(np.linalg.norm(g - P @ (P.T @ g)), rel=1e-5)
    in_sample = rlc.in_sample(spec, [5])
    assert (G[5] ** 2).mean() > (in_sample[5] ** 2).mean()  # held out is not an in-sample artefact


def test_bad_requests_are_clear_errors(tmp_path):
    H = power_law_trajectory(n=10, d=50)
    with pytest.raises(SpectralError, match="between 1 and"):
        principal_components(H, 11)
    with pytest.raises(SpectralError, match="unknown method"):
        principal_components(H, 2, method="magic")
    s = write_store(tmp_path / "run", H)
    with pytest.raises(SpectralError, match="unknown stream"):
        principal_components(s, 2, stream="private")


def test_cli_writes_results_a_spectrum_reloads(cli, tmp_path):

    from spectral.analyse import Spectrum

    H = power_law_trajectory()
    write_store(tmp_path / "run", H)
    result = cli("spectral.analyse", tmp_path / "run", "--k", "12", "--max-memory", "1M", "--no-progress")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run" / "analysis" / "clipped"
    spec = Spectrum.load(out)
    _, sv, Vt = np.linalg.svd(H.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(spec.eigenvalues, sv[:12] ** 2, rtol=1e-6)
    assert isinstance(spec.components, np.memmap) and spec.components.shape == (D, 12)
    assert largest_angle(spec.components, Vt[:12].T) < 1e-3
    import pandas as pd

    for name in ("spectrum.csv", "rlc_in_sample.csv", "rlc_held_out.csv", "rlc_steps.csv", "density_kde.csv"):
        assert len(pd.read_csv(out / name)) > 0
    assert "gram" in result.stdout  # says which method and why


def test_cli_bad_input_exit_2(cli, tmp_path):

    write_store(tmp_path / "run", power_law_trajectory(n=10, d=40))
    for args, fragment in [
        ((tmp_path / "nope",), "no such store"),
        ((tmp_path / "run", "--k", "11"), "between 1 and"),
        ((tmp_path / "run", "--stream", "private"), "unknown stream"),
    ]:
        result = cli("spectral.analyse", *args, "--no-progress")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert fragment in result.stderr.strip().splitlines()[-1]
    shard = sorted((tmp_path / "run/streams/clipped").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:50])
    result = cli("spectral.analyse", tmp_path / "run", "--k", "2")
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr


def test_lanczos_quadrature_is_exact_for_a_diagonal_operator():
    """For diagonal A and ±1 probes, zᵀ f(A) z = Σ f(λ_i): n-point Gauss quadrature reproduces every moment."""
    from spectral.analyse.density import lanczos_quadrature

    lam = np.linspace(0.1, 3.0, 25) ** 2
    nodes, weights = lanczos_quadrature(lambda Q: lam[:, None] * Q, len(lam), probes=3, steps=25)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-10)
    for p in range(1, 6):
        np.testing.assert_allclose((weights * nodes**p).sum(1), np.mean(lam**p), rtol=1e-8)


def test_slq_density_matches_the_exact_spectrum():
    from spectral.analyse.density import eigenvalue_kde, slq_density

    H = power_law_trajectory(slope=0.5).astype(np.float64)
    exact = np.linalg.eigvalsh(H @ H.T / N)
    density, info = slq_density(H, probes=64, steps=30, points=400)
    logs = np.log10(density["eigenvalue"].to_numpy())
    assert np.trapezoid(density["density"], logs) == pytest.approx(1.0, abs=0.02)
    assert info["zero_mass"] == pytest.approx((D - N) / D)
    cdf = np.cumsum(density["density"].to_numpy()) * (logs[1] - logs[0])
    for q in (0.25, 0.5, 0.75):
        at = np.log10(np.quantile(exact, q))
        assert np.interp(at, logs, cdf) == pytest.approx(q, abs=0.1)
    kde = eigenvalue_kde(exact)
    assert np.trapezoid(kde["density"], np.log10(kde["eigenvalue"])) == pytest.approx(1.0, abs=0.01)


def test_interrupted_gram_pass_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from spectral.analyse.matrix import TrajectoryMatrix

    s = write_store(tmp_path / "run", power_law_trajectory())
    full = principal_components(s, 6, method="gram")
    real = TrajectoryMatrix.blocks
    read, die = [], [True]

    def dying_blocks(self, desc="pass", start_col=0, **kwargs):
        for i, item in enumerate(real(self, desc, start_col, **kwargs)):
            if desc == "gram" and die[0] and i == 5:
                raise KeyboardInterrupt  # killed in the middle of the first pass
            read.append(item[0])
            yield item

    monkeypatch.setattr(TrajectoryMatrix, "blocks", dying_blocks)
    monkeypatch.setattr("spectral.analyse.matrix.time.monotonic", iter(range(0, 10**6, 100)).__next__)
    kw = dict(method="gram", max_memory=200_000, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        principal_components(s, 6, **kw)
    read.clear()
    die[0] = False
    resumed = principal_components(s, 6, **kw)
    np.testing.assert_allclose(resumed.eigenvalues, full.eigenvalues, rtol=1e-12)
    block = TrajectoryMatrix(s, max_memory=200_000).compute_cols  # blocks() yields compute sub-blocks
    assert read[0] == 5 * block  # the Gram pass continued where it stopped, not from column 0
    again = principal_components(s, 3, **kw)  # a finished Gram is reused: only the eigenvector pass
    assert again.passes == 1


def _authors_orthogonal_iteration(H, k, iters, V0):
    """ml-swissknife's orthogonal_iteration written out (float64, d-space): W = HᵀH V, then modified
    Gram–Schmidt column by column, eigenvalues as per-column Rayleigh quotients ‖H v‖² / ‖v‖²."""
    V = V0.copy()
    for _ in range(iters):
        W = H.T @ (H @ V)
        for i in range(k):
            W[:, i] /= np.linalg.norm(W[:, i])
            W[:, i + 1 :] -= np.sum(W[:, i : i + 1] * W[:, i + 1 :], axis=0) * W[:, i : i + 1]
        V = W
    lam = ((H @ V) ** 2).sum(0) / (V**2).sum(0)
    return lam, V


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_seedcode_is_the_authors_algorithm(tmp_path, iters):
    from spectral.analyse.solvers import GaussianColumns

    H = power_law_trajectory(n=30, d=400, slope=0.7, seed=4).astype(np.float64)
    s = write_store(tmp_path / "run", H.astype(np.float32))
    k = 6
    spec = principal_components(s, k, method="seedcode", orthiter_iters=iters, seed=3)
    V0 = GaussianColumns(400, k, 3)[0:400]  # the same Gaussian start
    lam, V = _authors_orthogonal_iteration(H, k, iters, V0)
    order = np.argsort(lam)[::-1]
    np.testing.assert_allclose(spec.eigenvalues, lam[order], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.asarray(spec.components)), np.abs(V[:, order]), atol=1e-5)
    if iters == 1:  # one iteration is far from converged: the test can tell the solver from the exact one
        exact = np.linalg.eigvalsh(H @ H.T)[::-1][:k]
        assert np.max(np.abs(lam[order] - exact) / exact) > 1e-3


def test_gaussian_columns_are_reproducible_in_any_blocks():
    from spectral.analyse.solvers import GaussianColumns

    g = GaussianColumns(1000, 3, seed=5, block=128)
    whole = g[0:1000]
    np.testing.assert_array_equal(np.vstack([g[0:300], g[300:301], g[301:1000]]), whole)


def test_in_sample_curve_from_the_gram_matrix_equals_the_one_from_components():
    """rlc.in_sample_from_gram (no pass over the rows) against rlc.in_sample of dense principal components."""
    H = power_law_trajectory(n=30, d=400, slope=0.8, seed=3).astype(np.float64)
    spec = principal_components(H, 12, method="gram")
    lam, curve = rlc.in_sample_from_gram(H @ H.T, 12)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(H @ H.T)[::-1][:12], rtol=1e-10)
    expected = rlc.summarize(rlc.in_sample(spec, rlc.k_grid(12)))
    np.testing.assert_allclose(curve[["k", "rms", "max"]], expected[["k", "rms", "max"]], rtol=1e-6, atol=1e-9)
