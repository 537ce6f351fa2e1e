"""The batch-ladder study on a synthetic ladder whose eigenvalues are exactly linear in 1/B per rank:
the ladder and halves predictions are then exact, the B = ∞ line returns the signal's spectrum, and the
uncorrected run is far off; every rung's numbers come from the one joint Gram pass."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

import spectral.store as store_mod

sys.path.insert(0, str(REPO / "experiments"))
import batch_study  # noqa: E402

N, D_SIG, D_NOISE, SIZES = 40, 300, 300, (128, 256, 512, 1000)


def ladder_store(root):
    """H_B = U [diag(s) P | diag(e) Q / √B]: signal and noise on disjoint coordinates with a shared
    left basis U, so H_B H_Bᵀ = U diag(s² + e²/B) Uᵀ. The run's row is B = 128 and Δ = [0 | E/√128], so
    the halves H ± Δ are B = 64 and B = ∞ (mean eigenvalue: 64's)."""
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((N, N)))[0]
    P = np.linalg.qr(rng.standard_normal((D_SIG, N)))[0].T
    Q = np.linalg.qr(rng.standard_normal((D_NOISE, N)))[0].T
    k = np.arange(1, N + 1)
    s, e = 0.5 * k**-1.0, 3.0 * k**-0.3
    S, E = (U * s) @ P, (U * e) @ Q

    def rows(b):
        return np.c_[S, E / np.sqrt(b)].astype(np.float32)

    layout = [{"name": "w", "shape": [D_SIG + D_NOISE], "offset": 0, "numel": D_SIG + D_NOISE}]
    streams = ["clipped", "sampling", *(f"probe{m}" for m in SIZES)]
    dp = {"sampling": "poisson", "batch_size": 128, "sample_rate": 128 / 67349}
    w = store_mod.StoreWriter.create(root, layout=layout, streams=streams, dtype="float32", shard_rows=16,
                                     meta={"dp": dp}, tile_cols=128)  # fmt: skip
    data = {"clipped": rows(128), "sampling": np.c_[np.zeros_like(S), E / np.sqrt(128)].astype(np.float32)}
    data.update({f"probe{m}": rows(m) for m in SIZES})
    for t in range(N):
        w.append(t, {name: x[t] for name, x in data.items()}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return s**2, e**2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    signal, noise = ladder_store(root / "run")
    batch_study.main([str(root / "run"), "--out", str(root / "out")])
    return root / "out", signal, noise


def test_exactly_linear_rungs_are_predicted_exactly_and_the_run_alone_is_not(study):
    out, _, _ = study
    v = pd.read_csv(out / "batch_validation.csv")
    err = v[v.ranks == "1-40"].set_index("estimator").max_rel_error
    assert err[err.index.str.startswith("ladder")].iloc[0] < 1e-4
    assert err[err.index.str.startswith("halves")].iloc[0] < 1e-4
    assert err[err.index.str.startswith("no correction")].iloc[0] > 0.5


def test_each_rung_is_its_own_trajectory(study):
    out, signal, noise = study
    spectra = pd.read_csv(out / "batch_spectra.csv")
    for b in SIZES:
        got = spectra[spectra.rung == f"probe {b}"].eigenvalue.to_numpy()
        np.testing.assert_allclose(got, np.sort(signal + noise / b)[::-1], rtol=1e-4)
    inf = spectra[spectra.rung.str.startswith("B = inf")].eigenvalue.to_numpy()
    np.testing.assert_allclose(inf, np.sort(signal)[::-1], rtol=1e-3, atol=1e-6)
    ladder = pd.read_csv(out / "batch_ladder.csv").set_index("rung")
    assert ladder.loc["half batch (H + Δ)", "batch"] == 64
    # row norms: ‖h‖² = Σ_j s_j² U_tj² + Σ_j e_j² U_tj²/B, so the mean square is (Σ s² + Σ e²/B)/n
    np.testing.assert_allclose(ladder.loc["probe 1000", "mean_sq_norm"], (signal.sum() + noise.sum() / 1000) / N,
                               rtol=1e-4)  # fmt: skip
    summary = json.loads((out / "batch_study.json").read_text())
    assert summary["inf"][0]["negative_eigenvalues"] == 0
    assert abs(summary["inf"][0]["top10_energy"] - np.sort(signal)[::-1][:10].sum() / signal.sum()) < 1e-4
    assert (out / "fig7_batch.png").is_file() and (out / "fig7_batch.csv").is_file()
