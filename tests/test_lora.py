"""LoRA's implicit noise: the variance formula against Monte Carlo, Gaussianity, the study script."""

from __future__ import annotations

import numpy as np
import pytest

from spectral.analyse import lora


@pytest.mark.parametrize("r", [1, 4, 16])
def test_deviation_variance_matches_monte_carlo(r):
    rng = np.random.default_rng(r)
    G = rng.standard_normal((5, 12)) * np.linspace(0.2, 2.0, 12)  # uneven columns: the G_ij² term matters
    # Monte Carlo in plain numpy: A with N(0, 1/r) entries, D = G (AᵀA − I)
    A = rng.standard_normal((40_000, r, 12)) / np.sqrt(r)
    draws = np.einsum("ij,njk->nik", G, np.einsum("nri,nrk->nik", A, A) - np.eye(12))
    predicted = lora.deviation_variance(G, r)
    np.testing.assert_allclose(draws.mean(0), 0.0, atol=5 * np.sqrt(predicted.max() / 40_000))
    np.testing.assert_allclose(draws.var(0), predicted, rtol=0.05)
    # the helpers: deviation is G (AᵀA − I) computed without AᵀA; random_a has entries of variance 1/r
    np.testing.assert_allclose(lora.deviation(G, A[0]), draws[0], atol=1e-12)
    a = lora.random_a(r, 20_000, rng)
    assert a.shape == (r, 20_000) and a.var() == pytest.approx(1 / r, rel=0.05) and abs(a.mean()) < 0.02


def test_gaussianity_and_equivalent_sigma():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((200, 300))
    var = lora.deviation_variance(G, 64)
    g = lora.gaussianity(lora.deviation(G, lora.random_a(64, 300, rng)), var)
    assert g["ks_statistic"] < 0.02 and abs(g["std"] - 1) < 0.02 and g["histogram_overlap"] > 0.95
    heavy = lora.gaussianity(rng.standard_t(2, size=(200, 300)), np.ones((200, 300)))
    assert heavy["ks_statistic"] > g["ks_statistic"]  # the check can tell a heavy tail apart
    sigma = lora.equivalent_noise_multiplier(np.full((3, 3), 4e-6), max_grad_norm=0.1, batch_size=64)
    assert sigma == pytest.approx(2e-3 * 64 / 0.1)


def test_study_script_runs_on_a_store(cli, tmp_path):

    import spectral.store as store

    rng = np.random.default_rng(0)
    layout = [
        {"name": "w", "shape": [10, 30], "offset": 0, "numel": 300},
        {"name": "b", "shape": [10], "offset": 300, "numel": 10},
    ]
    w = store.StoreWriter.create(
        tmp_path / "run",
        layout=layout,
        streams=["clipped"],
        dtype="float32",
        shard_rows=8,
        meta={"dp": {"max_grad_norm": 0.1, "batch_size": 16}},
    )
    for i in range(24):
        w.append(
            i,
            {"clipped": (rng.standard_normal(310) * np.r_[np.linspace(1, 0.1, 300), np.ones(10)]).astype(np.float32)},
            {"loss": 0.0},
        )
    w.commit(status="complete")
    w.close()
    proc = cli(
        "experiments.lora_noise",
        tmp_path / "run",
        "--steps",
        "4",
        "--ranks",
        "1",
        "4",
        "--draws",
        "2",
        "--spectrum-rank",
        "2",
        "--out",
        tmp_path / "lora",
    )
    assert proc.returncode == 0, proc.stderr
    table = np.genfromtxt(tmp_path / "lora" / "lora_variance.csv", delimiter=",", names=True)
    assert list(table["rank"]) == [1, 4] and table["rms_deviation"][1] < table["rms_deviation"][0]
    assert (tmp_path / "lora" / "lora_noise.png").stat().st_size > 10_000


def test_public_projector_curve_equals_in_sample_for_the_own_components(tmp_path):
    """G_k under a given basis: with the trajectory's own components it is the in-sample curve;
    with a random basis almost nothing is captured."""
    import importlib

    from helpers import power_law_trajectory, write_store

    from spectral.analyse import principal_components, rlc

    study = importlib.import_module("experiments.public_subspace")
    H = power_law_trajectory(n=40, d=800, seed=7)
    s = write_store(tmp_path / "s", H)
    spec = principal_components(s, 10)
    ks = [0, 1, 5, 10]
    own = study.projector_curve(s, np.asarray(spec.components), ks)
    pd_expected = rlc.summarize(rlc.in_sample(spec, ks))
    np.testing.assert_allclose(own.rms, pd_expected.rms, rtol=1e-5)
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((800, 10)))
    rand = study.projector_curve(s, Q, ks)
    assert rand.rms.iloc[-1] > 0.9 * rand.rms.iloc[0] and own.rms.iloc[-1] < 0.5 * own.rms.iloc[0]
