"""Predicting other batch sizes from the sampling stream, against the exact expectation of a
synthetic population of per-example gradients and against a direct draw at the larger batch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import spectral.store as store_mod
from spectral.analyse import AnalyseConfig, analyse
from spectral.analyse import batch as B
from spectral.errors import SpectralError

N_POP, D, STEPS, BATCH = 2000, 40, 600, 20


def population(seed=0):
    """Per-example gradients g_i(t) = μ_t + x_i: a drifting 3-dimensional mean and a fixed spread
    with a decaying spectrum (so the noise has structure of its own)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_POP, D)) * np.linspace(1.0, 0.1, D)
    U = np.linalg.qr(rng.standard_normal((D, 3)))[0]
    C = rng.standard_normal((STEPS, 3)) * np.array([0.6, 0.4, 0.25]) + np.array([0.5, 0.0, 0.0])
    return X, C @ U.T


def draw(X, mu, batch, seed):
    """Rows h_t = (1/B) Σ b_i g_i(t) under Poisson sampling at q = batch/N, and Δ_t from random halves."""
    rng = np.random.default_rng(seed)
    q = batch / N_POP
    H, Delta = np.empty((STEPS, D)), np.empty((STEPS, D))
    for t in range(STEPS):
        idx = np.flatnonzero(rng.random(N_POP) < q)
        s = np.where(rng.random(len(idx)) < 0.5, 1.0, -1.0)
        g = X[idx] + mu[t]
        H[t], Delta[t] = g.sum(0) / batch, (s[:, None] * g).sum(0) / batch
    return H, Delta


def expected(X, mu, batch) -> np.ndarray:
    """E[HᵀH] at ``batch`` (inf: every example every step): Σ_t m_t m_tᵀ + (1 − q_B)/(B N) Σ_i g_i g_iᵀ."""
    total = np.zeros((D, D))
    XX, Xs = X.T @ X, X.sum(0)
    for m_t in mu:
        m = Xs / N_POP + m_t
        total += np.outer(m, m)
        if not math.isinf(batch):
            GG = XX + np.outer(Xs, m_t) + np.outer(m_t, Xs) + N_POP * np.outer(m_t, m_t)
            total += (1 - batch / N_POP) / (batch * N_POP) * GG
    return total


def write_run(root, H, Delta, batch, n_pop=N_POP):
    d = H.shape[1]
    layout = [{"name": "w", "shape": [d], "offset": 0, "numel": d}]
    dp = {"sampling": "poisson", "batch_size": batch, "sample_rate": batch / n_pop}
    w = store_mod.StoreWriter.create(
        root,
        layout=layout,
        streams=["clipped", "sampling"],
        dtype="float32",
        shard_rows=64,
        meta={"dp": dp},
        tile_cols=16,
    )
    for t in range(len(H)):
        w.append(t, {"clipped": H[t].astype(np.float32), "sampling": Delta[t].astype(np.float32)}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return store_mod.open(root)


def high_rank_population(seed=0, n_pop=1500, d=4000, steps=120, scale=0.4):
    """Per-example gradients whose spread has a high effective rank (d ≫ steps), as gradients' do, and a
    drifting mean of norm ``scale`` against per-example norms of 6.3 (clipped gradients: mean ≪ spread).
    Poisson batch sizes also scale the mean (|b|/B̄ μ_t): a coherent noise the resolution includes."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_pop, d), dtype=np.float32) * np.float32(0.1)
    X -= X.mean(0)
    U = np.linalg.qr(rng.standard_normal((d, 3)))[0]
    mu = scale * (rng.standard_normal((steps, 3)) * np.array([1.0, 0.7, 0.5]) + np.array([0.8, 0, 0])) @ U.T
    return X, mu


def draw_rows(X, mu, batch, seed):
    rng = np.random.default_rng(seed)
    q = batch / len(X)
    H, Delta = np.empty((len(mu), X.shape[1])), np.empty((len(mu), X.shape[1]))
    for t in range(len(mu)):
        idx = np.flatnonzero(rng.random(len(X)) < q)
        s = np.where(rng.random(len(idx)) < 0.5, 1.0, -1.0)
        g = X[idx] + mu[t]
        H[t], Delta[t] = g.sum(0) / batch, (s[:, None] * g).sum(0) / batch
    return H, Delta


def test_steps_estimator_at_8x_the_batch_matches_a_direct_draw_to_its_resolution(tmp_path):
    """High-rank noise (d = 4000 ≫ 120 steps): the predicted spectrum at 8·B̄ against the same steps drawn
    at 8·B̄. The signal's eigenvalues agree rank by rank; the tail agrees to the stated resolution (the
    run's own off-diagonal noise, which one trajectory cannot remove), far below the run's floor."""
    X, mu = high_rank_population()
    H, Delta = draw_rows(X, mu, BATCH, seed=1)
    store = write_run(tmp_path / "run", H, Delta, BATCH, n_pop=len(X))
    spec, G_in, G_out, info = B.predict(store, 30, 8 * BATCH, split="half", estimator="steps")
    direct = np.linalg.eigvalsh((lambda h: h @ h.T)(draw_rows(X, mu, 8 * BATCH, 2)[0]))[::-1][:30]
    measured = np.linalg.eigvalsh(H @ H.T)[::-1][:30]
    assert measured[10] > 4 * direct[10]  # the run's flat tail sits far above batch 160's
    np.testing.assert_allclose(spec.eigenvalues[:3], direct[:3], rtol=0.15)
    tail = np.abs(spec.eigenvalues[5:] - direct[5:])
    assert tail.max() <= info["resolution"] + 0.1 * direct[5]
    assert info["resolution"] < 0.8 * measured[10]  # what is resolved lies below the run's floor
    # in-sample mean-square G_k: the trace identity of the predicted trajectory (up to the few per-step
    # estimates below zero, counted as 0)
    ms = (G_in**2).mean()
    np.testing.assert_allclose(ms[3], (spec.total_energy - spec.eigenvalues[:3].sum()) / len(H), rtol=0.01)
    assert list(G_out.index) == list(range(len(H) // 2, len(H)))
    assert info["estimator"] == "steps" and info["factor"] == pytest.approx(1 - 1 / 8)


def test_steps_estimator_is_unbiased_for_the_expected_gram_matrix():
    """Averaged over runs, H Hᵀ − f diag(‖Δ_t‖²) equals E[H Hᵀ] at 8·B̄ entry by entry (the model-free claim)."""
    X, mu = high_rank_population(d=500, n_pop=400, steps=6)
    f = 1 - 1 / 8
    preds, directs = [], []
    for seed in range(300):
        H, Delta = draw_rows(X, mu, BATCH, seed)
        preds.append(B.steps_gram(np.block([[H @ H.T, H @ Delta.T], [Delta @ H.T, Delta @ Delta.T]]), 6, f))
        Hd, _ = draw_rows(X, mu, 8 * BATCH, 10_000 + seed)
        directs.append(Hd @ Hd.T)
    preds, directs = np.array(preds), np.array(directs)
    se = np.sqrt(preds.var(0) / len(preds) + directs.var(0) / len(directs))
    z = np.abs(preds.mean(0) - directs.mean(0)) / se
    assert z.max() < 4.5, z  # 36 entries, each within sampling error


def test_steps_estimator_at_infinite_batch_removes_the_flat_tail(tmp_path):
    X, mu = high_rank_population()
    H, Delta = draw_rows(X, mu, BATCH, seed=1)
    store = write_run(tmp_path / "run", H, Delta, BATCH, n_pop=len(X))
    spec, _, _, info = B.predict(store, 30, math.inf, split="none", estimator="steps")
    exact = np.linalg.eigvalsh(mu @ mu.T)[::-1]  # the means' own Gram matrix (X has mean zero)
    np.testing.assert_allclose(spec.eigenvalues[:3], exact[:3], rtol=0.15)
    floor = np.linalg.eigvalsh(H @ H.T)[::-1][10]
    assert np.abs(spec.eigenvalues[5:]).max() < info["resolution"] < 0.8 * floor  # below the floor, to resolution
    assert info["factor"] == pytest.approx(1 - BATCH / len(X))
    assert info["negative_eigenvalues"] > 0  # an unbiased estimate of a rank-3 matrix dips below zero
    assert np.isnan(spec.singular_values[spec.eigenvalues < 0]).all()  # reported, not clipped


def concentrated_population(seed=0, n_pop=1500, d=2000, steps=120, mean_scale=0.0):
    """Per-example gradients whose spread is concentrated (variances ∝ j^-2 along random directions:
    effective rank about 2.5, far below the 120 steps), as a fine-tuning run's clipped gradients are;
    ``mean_scale`` > 0 adds a drifting 3-dimensional mean."""
    rng = np.random.default_rng(seed)
    V = np.linalg.qr(rng.standard_normal((d, 60)))[0]
    X = (rng.standard_normal((n_pop, 60)) * np.arange(1, 61) ** -1.0) @ V.T
    X -= X.mean(0)
    U = np.linalg.qr(rng.standard_normal((d, 3)))[0]
    mu = mean_scale * (rng.standard_normal((steps, 3)) * np.array([1.0, 0.7, 0.5]) + np.array([0.8, 0, 0])) @ U.T
    return X, mu


def mean_direct_spectrum(X, mu, batch, draws=8):
    """E[λ_k] of the steps' Gram matrix at ``batch``, by drawing the trajectory again (mean over draws)."""
    return np.mean([np.linalg.eigvalsh((lambda h: h @ h.T)(draw_rows(X, mu, batch, 100 + i)[0]))[::-1] for i in
                    range(draws)], axis=0)  # fmt: skip


def ladder_rows(X, mu, sizes, seed):
    """Probe rungs as collect stores them: per step one sample of max(sizes) examples without replacement,
    the means of its nested prefixes."""
    rng = np.random.default_rng(seed)
    out = {m: np.empty((len(mu), X.shape[1])) for m in sizes}
    for t in range(len(mu)):
        prefix = np.cumsum(X[rng.choice(len(X), size=sizes[-1], replace=False)] + mu[t], axis=0)
        for m in sizes:
            out[m][t] = prefix[m - 1] / m
    return out


@pytest.mark.parametrize("mean_scale", [0.0, 0.3], ids=["pure-noise", "drifting-mean"])
def test_one_run_cannot_predict_8x_its_batch_where_the_noise_is_concentrated(tmp_path, mean_scale):
    """Noise of effective rank ≪ n (pure, and around a drifting low-rank mean). From one run at B̄, both
    one-run estimators miss the spectrum drawn at 8·B̄: ``halves`` (per rank linear in 1/B through B̄/2 and
    B̄) subtracts two O(1) eigenvalues to get one 8× smaller, so their fluctuations (≈ 10%) become errors of
    order one; ``steps`` removes the noise on the diagonal only and drives most of the pure noise's
    eigenvalues below zero. This is why neither is a default (paper_repro.md, batch section)."""
    X, mu = concentrated_population(mean_scale=mean_scale)
    H, Delta = draw_rows(X, mu, BATCH, seed=1)
    store = write_run(tmp_path / "run", H, Delta, BATCH, n_pop=len(X))
    direct = mean_direct_spectrum(X, mu, 8 * BATCH)[:30]
    spec, _, _, info = B.predict(store, 30, 8 * BATCH, split="none", estimator="halves")
    assert info["estimator"] == "halves"
    assert (np.abs(spec.eigenvalues - direct) / direct)[:10].max() > 0.3  # where the energy is
    _, _, _, steps_info = B.predict(store, 30, 8 * BATCH, split="none", estimator="steps")
    if mean_scale == 0:
        assert steps_info["negative_eigenvalues"] > len(H) / 2


@pytest.mark.parametrize("mean_scale", [0.0, 0.3], ids=["pure-noise", "drifting-mean"])
def test_a_probe_ladder_predicts_its_top_rung_to_the_rungs_own_fluctuation(mean_scale):
    """The same populations with probe rungs B̄, 2B̄, 4B̄, 7.8B̄ on one trajectory: the per-rank line in 1/B
    fitted on the lower three predicts the top rung with a median error over ranks 1–30 of about the
    spread of one trajectory's eigenvalues (10–20%; single ranks miss by more), and its worst rank of the
    top 10 is nearer than the one-run ``halves`` estimate's."""
    X, mu = concentrated_population(mean_scale=mean_scale)
    sizes = [BATCH, 2 * BATCH, 4 * BATCH, 156]
    rungs = ladder_rows(X, mu, sizes, seed=1)
    lam = np.array([np.linalg.eigvalsh(rungs[m] @ rungs[m].T)[::-1] for m in sizes])
    a, b = B.linear_in_inverse_batch(sizes[:3], lam[:3])
    predicted = np.sort(a + b / sizes[-1])[::-1][:30]
    ladder_error = np.abs(predicted - lam[3][:30]) / lam[3][:30]
    assert np.median(ladder_error) < 0.25
    H, Delta = draw_rows(X, mu, BATCH, seed=1)
    Z = np.r_[H, Delta]
    run, half = B.half_batch_eigenvalues(Z @ Z.T, len(H))
    one_run = np.sort(run - B.factor(BATCH, sizes[-1], BATCH / len(X)) * (half - run))[::-1][:30]
    assert (np.abs(one_run - lam[3][:30]) / lam[3][:30])[:10].max() > ladder_error[:10].max()


def test_rank_range_errors_know_the_answer():
    """10% too high on ranks 1-10 and exact elsewhere: 0.1 rank by rank and in energy there, 0 after; a range
    past n is capped at n, an empty one left out."""
    measured = np.linspace(10.0, 1.0, 30)
    predicted = measured * np.r_[np.full(10, 1.1), np.ones(20)]
    errors = B.rank_range_errors(predicted, measured, [(1, 10), (11, 100), (31, 40)])
    assert list(errors) == ["1-10", "11-30"]
    for key in ("max", "median", "energy"):
        assert errors["1-10"][key] == pytest.approx(0.1)
        assert errors["11-30"][key] == 0.0


def test_ladder_gram_checks_itself_by_predicting_its_top_rung_from_the_others():
    """The leave-top-out errors ladder_gram reports are those of the lower rungs' per-rank line at the top
    rung, computed here from each rung's own Gram matrix; its estimate at a rung's batch has that rung's
    eigenvalues line."""
    X, mu = concentrated_population()
    sizes = [BATCH, 2 * BATCH, 4 * BATCH, 156]
    rungs = ladder_rows(X, mu, sizes, seed=2)
    Z = np.concatenate([rungs[m] for m in sizes])
    n = len(rungs[sizes[0]])
    K, info = B.ladder_gram(Z @ Z.T, n, sizes, math.inf)
    lam = np.array([np.linalg.eigvalsh(rungs[m] @ rungs[m].T)[::-1] for m in sizes])
    a, b = B.linear_in_inverse_batch(sizes[:3], lam[:3])
    rel = np.abs(np.sort(a + b / sizes[-1])[::-1] - lam[3]) / lam[3]
    assert info["rungs"] == sizes
    for key, part in (("max", rel[:10].max()), ("median", np.median(rel[:10]))):  # ranks past 10 include null ones
        assert info["leave_top_out_rel_error"]["1-10"][key] == pytest.approx(part)
    a_all, _ = B.linear_in_inverse_batch(sizes, lam)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(K)[::-1][: n // 2], np.sort(a_all)[::-1][: n // 2], rtol=1e-6, atol=1e-9 * a_all.max()
    )


def test_linear_in_inverse_batch_recovers_the_line_per_rank():
    a, b = np.array([3.0, 1.0, 0.2]), np.array([50.0, 20.0, 9.0])
    batches = np.array([64, 128, 256, 512])
    lam = a + b / batches[:, None]
    got_a, got_b = B.linear_in_inverse_batch(batches, lam)
    np.testing.assert_allclose(got_a, a)
    np.testing.assert_allclose(got_b, b)


def test_half_batch_eigenvalues_are_those_of_the_halves_own_means():
    rng = np.random.default_rng(0)
    H, Delta = rng.standard_normal((7, 30)), rng.standard_normal((7, 30))
    Z = np.r_[H, Delta]
    run, half = B.half_batch_eigenvalues(Z @ Z.T, 7)
    np.testing.assert_allclose(run, np.linalg.eigvalsh(H @ H.T)[::-1])
    plus, minus = (np.linalg.eigvalsh((H + s * Delta) @ (H + s * Delta).T)[::-1] for s in (1, -1))
    np.testing.assert_allclose(half, (plus + minus) / 2)


def test_matrix_estimator_is_the_second_moment_HtH_minus_f_DtD(tmp_path):
    """The ``matrix`` estimator: eigenpairs of HᵀH − f ΔᵀΔ (dense numpy) from the Gram matrix of [H; Δ];
    unbiased for E[HᵀH] at 8·B̄ as a matrix (low-dimensional population, exact expectation)."""
    X, mu = population()
    H, Delta = draw(X, mu, BATCH, seed=1)
    store = write_run(tmp_path / "run", H, Delta, BATCH)
    spec, G_in, _, info = B.predict(store, 10, 8 * BATCH, split="none", estimator="matrix")
    Hs, Ds = store.rows("clipped").astype(float), store.rows("sampling").astype(float)
    dense = Hs.T @ Hs - info["factor"] * Ds.T @ Ds
    w, V = np.linalg.eigh(dense)
    np.testing.assert_allclose(spec.eigenvalues, w[::-1][:10], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(spec.components * V[:, ::-1][:, :10], axis=0)), 1, atol=1e-5)
    exact = expected(X, mu, 8 * BATCH)
    assert np.linalg.norm(dense - exact) < 0.15 * np.linalg.norm(exact)
    measured = Hs.T @ Hs
    assert np.linalg.norm(measured - exact) > 2 * np.linalg.norm(dense - exact)


def test_the_stage_writes_its_own_directory_with_strict_json(tmp_path):
    X, mu = population()
    H, Delta = draw(X, mu, BATCH, seed=1)
    write_run(tmp_path / "run", H, Delta, BATCH)
    analyse(tmp_path / "run", AnalyseConfig(k=8, batch_size=math.inf, batch_estimator="steps"), progress=False,
            device="cpu")  # fmt: skip
    out = tmp_path / "run" / "analysis" / "clipped@Binf"
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert summary["batch_size"] == "inf" and summary["passes"] == 2
    for name in ("spectrum.csv", "rlc_in_sample.csv", "rlc_held_out.csv", "components.npy"):
        assert (out / name).is_file()
    V = np.load(out / "components.npy")
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1, atol=1e-4)  # unit eigenvectors of M_B


def test_without_a_sampling_stream_it_is_one_clear_error(tmp_path):
    root = store_mod.write_matrix(tmp_path / "s", 4, 10, [(0, 10, np.ones((4, 10), np.float32))])
    with pytest.raises(SpectralError, match="collect with --streams clipped sampling"):
        B.predict(store_mod.open(root), 2, 100, estimator="halves")
    with pytest.raises(SpectralError, match="collect with --probe-batches"):
        B.predict(store_mod.open(root), 2, 100)  # the default needs probe rungs


def test_the_ladder_estimator_through_the_stage(tmp_path):
    """``analyse --batch-size`` on a run with probe rungs whose eigenvalues are exactly linear in 1/B:
    the predicted spectrum at 2000 and at inf is that line's, the leave-top-out error is zero, and the
    components are the top rung's eigenvectors."""
    from test_batch_study import SIZES, ladder_store

    signal, noise = ladder_store(tmp_path / "run")
    for b, expected in ((2000, signal + noise / 2000), (math.inf, signal)):
        spec = analyse(tmp_path / "run", AnalyseConfig(k=12, batch_size=b), progress=False, device="cpu")
        np.testing.assert_allclose(spec.eigenvalues, np.sort(expected)[::-1][:12], rtol=1e-3)
        assert spec.info["rungs"] == list(SIZES)
        assert spec.info["leave_top_out_rel_error"]["1-10"]["max"] < 1e-4
    top = store_mod.open(tmp_path / "run").rows("probe1000").astype(np.float64)
    V_top = np.linalg.svd(top, full_matrices=False)[2][:12].T
    np.testing.assert_allclose(np.abs(np.sum(spec.components * V_top, axis=0)), 1, atol=1e-4)


def test_report_draws_measured_and_predicted_on_the_same_axes(tmp_path):
    from spectral.report import ReportConfig, report

    X, mu = high_rank_population(d=600, n_pop=400, steps=60)
    H, Delta = draw_rows(X, mu, BATCH, seed=1)
    write_run(tmp_path / "run", H, Delta, BATCH, n_pop=len(X))
    analyse(tmp_path / "run", AnalyseConfig(k=20), progress=False, device="cpu")
    for b in (8 * BATCH, math.inf):
        analyse(tmp_path / "run", AnalyseConfig(k=20, batch_size=b, batch_estimator="steps"), progress=False,
                device="cpu")  # fmt: skip
    result = report(tmp_path / "run", ReportConfig(fit_range=(1, 20)))
    assert any(p.name == "fig7_batch.png" for p in result["figures"])
    fitted = result["fits"]["batch"]
    assert list(fitted) == ["measured (batch 20)", "predicted at 160", "predicted at inf"]
    assert fitted["predicted at inf"]["slope"] < fitted["measured (batch 20)"]["slope"]  # the floor removed: steeper
    json.loads((tmp_path / "run" / "figures" / "fits.json").read_text())


def test_a_ladder_that_fails_its_own_check_offers_no_prediction(tmp_path):
    """Probe rungs of concentrated noise (eigenvalues of one 120-step trajectory fluctuate by 10–20% per
    rank): the leave-top-out check misses some rank of 1…100 by more than 20%, so ``analyse --batch-size``
    refuses with the numbers; a rung itself is measured, not predicted."""
    X, mu = concentrated_population(mean_scale=0.3)
    sizes = [BATCH, 2 * BATCH, 4 * BATCH, 156]
    rungs = ladder_rows(X, mu, sizes, seed=1)
    layout = [{"name": "w", "shape": [X.shape[1]], "offset": 0, "numel": X.shape[1]}]
    w = store_mod.StoreWriter.create(tmp_path / "run", layout=layout, streams=[f"probe{m}" for m in sizes],
                                     dtype="float32", shard_rows=64, meta={}, tile_cols=256)  # fmt: skip
    for t in range(len(mu)):
        w.append(t, {f"probe{m}": rungs[m][t].astype(np.float32) for m in sizes}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    store = store_mod.open(tmp_path / "run")
    with pytest.raises(SpectralError, match="the ladder's own check fails.*misses ranks 1-100 by up to"):
        B.predict(store, 10, 1000)
    with pytest.raises(SpectralError, match="is a probe rung: analyse it with --stream probe40"):
        B.predict(store, 10, 40)
    with pytest.raises(SpectralError, match="no prediction at batch inf"):
        analyse(tmp_path / "run", AnalyseConfig(k=10, batch_size=math.inf), progress=False, device="cpu")
    assert not (tmp_path / "run" / "analysis" / "clipped@Binf").exists()  # nothing the report would draw
