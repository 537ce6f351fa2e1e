"""The geometric-median toy against brute force, scipy and the privacy formulas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import torch
from conftest import run_main

from spectral.toy import geomedian as gm
from spectral.toy.grid import ToyConfig, run_grid


def brute_loss(beta, a, B):
    """F(β) = mean_i ‖a ⊙ (β − β_i)‖ over the full (n, d) matrix of β_i."""
    return np.linalg.norm(a * (beta - B), axis=1).mean()


def brute_grad(beta, a, B):
    r = a * (beta - B)
    return a * (r / np.linalg.norm(r, axis=1, keepdims=True)).mean(0)


def test_fast_loss_and_gradient_match_the_per_example_formula():
    data, d = gm.ToyData.sample(300, 300, seed=1), 7
    B = data.full("train", d)
    rng = np.random.default_rng(0)
    for mode in gm.MODES:
        a = gm.coefficients(d, mode)
        beta = rng.standard_normal((3, d))
        t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
        fast_g = gm.gradient(t(beta), t(a), t(data.train)).numpy()
        fast_f = gm.loss(t(beta), t(a), t(data.train)).numpy()
        for i in range(3):
            np.testing.assert_allclose(fast_g[i], brute_grad(beta[i], a, B), rtol=1e-10, atol=1e-13)
            assert fast_f[i] == pytest.approx(brute_loss(beta[i], a, B), rel=1e-12)
        assert np.linalg.norm(brute_grad(beta[0], a, B)) <= a.max()  # per-example norm bound


def test_noiseless_dp_gd_converges_to_the_geometric_median():
    data, d = gm.ToyData.sample(501, 10, seed=2), 5  # odd n: a unique median
    a = gm.coefficients(d, "sqrt")
    B = data.full("train", d)
    ref = scipy.optimize.minimize(
        brute_loss, np.full(d, 0.3), args=(a, B), method="Powell", options={"xtol": 1e-10, "ftol": 1e-14}
    )
    beta_star, f_star = gm.optimum(a, data.train)
    assert ref.fun == pytest.approx(f_star, abs=1e-7)  # the closed-form optimum is the true one
    np.testing.assert_allclose(ref.x, beta_star, atol=1e-3)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    noise = torch.zeros((1, 4000, d), dtype=torch.float64)
    avg = gm.dp_gd(t(a[None]), t(data.train), t([0.05]), noise, t([1.0]))
    assert brute_loss(avg.reshape(-1).numpy(), a, B) - f_star < 2e-3


def test_advanced_composition_step_epsilon_is_the_largest_that_composes():
    for steps in (10, 160, 5120):
        eps_s, delta_s = gm.step_privacy(2.0, 1e-6, steps)
        assert delta_s == pytest.approx(1e-6 / (steps + 1))
        # Dwork–Rothblum–Vadhan: ε' = √(2T ln(1/δ')) ε_s + T ε_s (e^{ε_s} − 1), total δ = T δ_s + δ'
        total = lambda e: math.sqrt(2 * steps * math.log(1 / delta_s)) * e + steps * e * (math.exp(e) - 1)  # noqa: E731
        assert total(eps_s) <= 2.0 + 1e-9
        assert total(eps_s * 1.0001) > 2.0
        assert steps * delta_s + delta_s == pytest.approx(1e-6)


def test_noise_std_matches_the_gaussian_mechanism():
    T = 40
    eps_s, delta_s = gm.step_privacy(2.0, 1e-6, T)
    a = gm.coefficients(50, "const")
    sens = gm.sensitivity(a, 10_000)
    assert sens == pytest.approx(2 * 3.0 / 10_000)
    variance = 2 * math.log(1.25 / delta_s) * sens**2 / eps_s**2  # the classic Gaussian mechanism
    assert gm.noise_multiplier(2.0, 1e-6, T) * sens == pytest.approx(math.sqrt(variance))
    # the noise a DP-GD step adds has that std: β_1 = −lr (∇F(0) + std z)
    data = gm.ToyData.sample(1000, 10, seed=0)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    z = gm.step_noise([7], 1, 50, dtype=torch.float64)
    std = math.sqrt(variance)
    beta1 = gm.dp_gd(t(a[None]), t(data.train), t([1.0]), z, t([std])).reshape(-1)  # one step: avg = β_1
    added = -beta1 - gm.gradient(torch.zeros((1, 50), dtype=torch.float64), t(a[None]), t(data.train))[0]
    np.testing.assert_allclose(added.numpy(), std * z[0, 0].numpy(), rtol=1e-9)
    draws = gm.step_noise([0, 1], 500, 200).numpy()
    assert abs(draws.std() - 1) < 0.01  # standard normal draws (200k of them)


def test_rdp_accountant_is_tighter_and_meets_the_budget():
    from opacus.accountants import RDPAccountant

    T = 160
    sigma = gm.noise_multiplier(2.0, 1e-6, T, "rdp")
    assert sigma < gm.noise_multiplier(2.0, 1e-6, T, "advanced")
    acc = RDPAccountant()
    acc.history = [(sigma, 1.0, T)]
    assert acc.get_epsilon(1e-6) <= 2.0 + 1e-3


def test_seed_code_const_is_increasing_with_understated_sensitivity():
    a = gm.coefficients(100, "const", seed_code_const=True)
    np.testing.assert_array_equal(a, 3.0 * np.arange(1, 101))
    assert gm.sensitivity(a, 10_000, seed_code=True) == pytest.approx(6e-4)
    assert gm.sensitivity(a, 10_000) == pytest.approx(2 * 300 / 10_000)  # the true one is d times larger
    np.testing.assert_array_equal(gm.coefficients(4, "const"), [3.0] * 4)


def test_vectorised_grid_equals_a_plain_loop():
    cfg = ToyConfig(
        dims=(3, 6), modes=("const", "linear"), steps=(5, 12), lrs=(0.1, 1.0), seeds=(0, 1), n_train=200, n_test=100
    )
    runs = run_grid(cfg, progress=False, dtype=torch.float64).runs
    data = gm.ToyData.sample(200, 100, seed=0)
    for (mode, d, T, lr, seed), row in runs.set_index(["mode", "d", "T", "lr", "seed"]).iterrows():
        a = gm.coefficients(d, mode)
        std = gm.sensitivity(a, 200) * gm.noise_multiplier(2.0, 1e-6, T)
        z = gm.step_noise([seed], T, d, dtype=torch.float64)[0].numpy()
        beta, avg = np.zeros(d), np.zeros(d)
        B = data.full("train", d)
        for t in range(T):  # the seed code's loop, one run at a time
            beta = beta - lr * (brute_grad(beta, a, B) + std * z[t])
            avg = avg * t / (t + 1) + beta / (t + 1)
        assert row.train_loss == pytest.approx(brute_loss(avg, a, B), rel=1e-9)
        assert row.test_loss == pytest.approx(brute_loss(avg, a, data.full("test", d)), rel=1e-9)


def test_quick_cli_writes_results_that_show_the_papers_message(cli, tmp_path, monkeypatch):
    out = tmp_path / "toy"
    proc = cli("spectral.toy", tmp_path, "--scale", "quick")
    assert proc.returncode == 0, proc.stderr
    best = pd.read_csv(out / "toy_best.csv")
    assert {"mode", "d", "T", "lr", "train_mean", "train_std", "test_mean", "test_std"} <= set(best.columns)
    assert (out / "toy.png").stat().st_size > 10_000
    loss = best.pivot(index="d", columns="mode", values="train_mean")
    # without decay the loss grows with d; with fast decay it stays flat
    assert loss["const"].iloc[-1] - loss["const"].iloc[0] > 0.3
    assert abs(loss["quadratic"].iloc[-1] - loss["quadratic"].iloc[0]) < 0.05
    # a rerun with the same settings resumes: no group is recomputed, the results stay as they were
    before = (out / "toy_runs.csv").read_text()
    import spectral.toy.grid as grid
    from spectral.toy import ToyConfig, toy

    def recompute(*args, **kwargs):
        raise AssertionError("a finished (T, d) group was run again")

    monkeypatch.setattr(grid, "dp_gd", recompute)
    toy(tmp_path, ToyConfig.quick(), progress=False, device="cpu")
    assert (out / "toy_runs.csv").read_text() == before


def test_cli_bad_input_exit_2(tmp_path):
    proc = run_main("spectral.toy", tmp_path / "x", "--scale", "quick", "--epsilon", "-1")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_a_rerun_continues_the_same_config_and_refuses_another_or_unreadable_results(tmp_path, monkeypatch):
    """The one resume policy (spectral.resume): same settings continue, other settings and unreadable
    results are refused with one clear error; nothing is silently restarted over."""
    import pandas as pd

    from spectral.errors import SpectralError

    small = dict(dims=(4, 8), modes=("const",), steps=(5,), lrs=(0.1,), seeds=(0, 1), n_train=20, n_test=20)
    first = run_grid(ToyConfig(**small), out=tmp_path, progress=False)
    with monkeypatch.context() as m:  # a finished grid trains nothing again
        m.setattr("spectral.toy.grid.dp_gd", lambda *a: pytest.fail("recomputed a finished group"))
        again = run_grid(ToyConfig(**small), out=tmp_path, progress=False)
    pd.testing.assert_frame_equal(
        again.runs, first.runs, check_dtype=False
    )  # continued: nothing recomputed, nothing lost
    other = ToyConfig(**{**small, "dims": (4, 16)})
    with pytest.raises(SpectralError, match="holds toy results of other settings.*--overwrite"):
        run_grid(other, out=tmp_path, progress=False)
    assert set(run_grid(other, out=tmp_path, progress=False, overwrite=True).runs.d) == {4, 16}
    (tmp_path / "toy_runs.csv").write_text('"unterminated')
    with pytest.raises(SpectralError, match="toy results there cannot be read"):
        run_grid(other, out=tmp_path, progress=False)
