"""Subspace retraining: projections, the coordinates mode, rank = d, accounting, the command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_run, run_main
from helpers import brute_force_clipped_sum, per_example_gradients, text_chunks, tiny_model_of

from spectral import store
from spectral.dp.engine import DPEngine
from spectral.errors import SpectralError
from spectral.retrain import CoordinateEngine, RetrainConfig, Subspace


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def _basis(d, r, seed=0):
    """A random orthonormal (d, r) basis in numpy: the independent reference for "in the subspace"."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, r)))
    return Q


def _random_subspace(d, r, seed=0):
    return Subspace(torch.from_numpy(_basis(d, r, seed)))  # float64 basis for float64 models


def _outside(v: torch.Tensor, Q: np.ndarray) -> float:
    """‖(I − QQᵀ)v‖ / ‖v‖ computed in numpy from the basis, not by the code under test."""
    v = v.detach().numpy()
    return float(np.linalg.norm(v - Q @ (Q.T @ v)) / np.linalg.norm(v))


def _engine(model, sigma, C=1e9, seed=0, sub=None, mode=None):
    return DPEngine(
        model,
        clipping="per-sample",
        optimizer="sgd",
        lr=0.1,
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=8.0,
        seed=seed,
        project=sub.project if sub is not None else None,
        restriction=mode,
    )


def _subspace64(sub):
    sub.V = sub.V.double()
    return sub


@pytest.mark.parametrize("mode", ["signal", "signal+noise"])
def test_projected_updates_lie_in_the_subspace(tiny_model, mode):
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 5)
    sub = _subspace64(Subspace(torch.from_numpy(Q)))
    engine = _engine(model, sigma=1.0, C=0.5, sub=sub, mode=mode)
    before = _flat_params(model)
    out = engine.step(text_chunks(tok, 4), lr=0.1)
    update = _flat_params(model) - before
    torch.testing.assert_close(update, -0.1 * out.private)  # SGD applies the released gradient
    if mode == "signal":  # the clipped signal is projected; the noise is full-dimensional
        assert _outside(out.clipped, Q) < 1e-6
        assert _outside(out.private - out.clipped, Q) > 0.9
    else:  # the whole update lies in the subspace
        assert _outside(update, Q) < 1e-6


def test_coordinates_equal_signal_plus_noise_without_noise(tiny_model):
    runs = {}
    for mode in ("signal+noise", "coordinates"):
        model, tok = tiny_model_of(tiny_model, "attention-qv")
        sub = _subspace64(_random_subspace(_flat_params(model).numel(), 6, seed=1))
        if mode == "coordinates":
            engine = CoordinateEngine(
                model,
                sub,
                optimizer="sgd",
                lr=0.1,
                noise_multiplier=0.0,
                max_grad_norm=1e9,
                expected_batch_size=8.0,
                seed=0,
            )
        else:
            engine = _engine(model, sigma=0.0, sub=sub, mode=mode)
        for _ in range(3):
            engine.step(text_chunks(tok, 4), lr=0.1)
        runs[mode] = _flat_params(model)
    torch.testing.assert_close(runs["coordinates"], runs["signal+noise"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_rank_d_reproduces_unrestricted_training(tiny_model, sigma):
    """A random orthogonal d x d basis (not the identity, which projects nothing by construction)."""
    runs = []
    for restricted in (False, True):
        model, tok = tiny_model_of(tiny_model, "attention-qv")
        d = _flat_params(model).numel()
        sub = _subspace64(_random_subspace(d, d, seed=3)) if restricted else None
        engine = _engine(model, sigma=sigma, C=0.5, sub=sub, mode="signal" if restricted else None)
        for _ in range(3):
            engine.step(text_chunks(tok, 4), lr=0.1)
        runs.append(_flat_params(model))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-11)


def test_coordinates_noise_lives_in_r_dimensions(tiny_model):
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    sub = _subspace64(_random_subspace(_flat_params(model).numel(), 4))
    engine = CoordinateEngine(
        model, sub, optimizer="sgd", lr=0.0, noise_multiplier=2.0, max_grad_norm=0.1, expected_batch_size=8.0, seed=0
    )
    draws = torch.stack(
        [(o.private - o.clipped) * 8.0 for o in (engine.step(text_chunks(tok, 8), 0.0) for _ in range(200))]
    )
    assert draws.shape == (200, 4)
    assert draws.std().item() == pytest.approx(2.0 * 0.1, rel=0.1)  # σC per coordinate, 800 draws


@pytest.fixture(scope="module")
def analysed_run(tiny_run, tmp_path_factory):
    """The session's tiny run, copied: these tests write retraining results into it."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("retrain") / "run")


def test_cli_retrains_every_variant_with_identical_accounting(cli, analysed_run):
    out = analysed_run / "retrain"
    args = [
        "spectral.retrain",
        analysed_run,
        "--ranks",
        "2",
        "6",
        "--seeds",
        "2",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--no-progress",
        "--out",
        out,
    ]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    h = pd.read_csv(out / "retrain_history.csv")
    assert set(h.variant) == {"rank 2", "rank 6", "full"} and set(h.seed) == {0, 1}
    assert sorted(h.step.unique()) == [0, 2, 4]
    final = h[h.step == 4]
    assert final.epsilon.nunique() == 1 and final.epsilon.iloc[0] > 0  # same ε for every variant
    summary = json.loads((out / "retrain_summary.json").read_text())
    assert set(summary["seconds_per_step"]) == {"rank 2", "rank 6", "full"}
    again = cli(*args)  # finished runs are not repeated
    assert again.returncode == 0 and pd.read_csv(out / "retrain_history.csv").shape == h.shape
    other = cli(*args[:-1], out, "--ranks", "3")  # other settings never overwrite silently
    assert other.returncode == 2 and "other settings" in other.stderr
    assert pd.read_csv(out / "retrain_history.csv").shape == h.shape
    proc = cli("spectral.report", analysed_run, "--fit-range", "1", "6")
    assert proc.returncode == 0, proc.stderr
    assert (analysed_run / "figures" / "fig5_retrain.png").stat().st_size > 10_000


@pytest.mark.parametrize("mode", ["coordinates", "signal+noise"])
def test_cli_public_subspace(cli, analysed_run, tmp_path, mode):
    out = tmp_path / "public"
    proc = cli(
        "spectral.retrain",
        analysed_run,
        "--ranks",
        "3",
        "--seeds",
        "1",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--no-progress",
        "--no-full",
        "--subspace-from",
        "public",
        "--public-size",
        "60",
        "--mode",
        mode,
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    h = pd.read_csv(out / "retrain_history.csv")
    assert set(h.subspace_from) == {"public"} and set(h["mode"]) == {mode}


def test_cli_non_private_setting_has_its_own_directory(cli, analysed_run):
    proc = cli(
        "spectral.retrain",
        analysed_run,
        "--ranks",
        "2",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--no-progress",
        "--no-full",
        "--non-private",
    )
    assert proc.returncode == 0, proc.stderr
    h = pd.read_csv(analysed_run / "retrain" / "signal-trajectory-nonprivate" / "retrain_history.csv")
    assert np.isinf(h.epsilon.iloc[-1]) and not h.private.any()


def test_cli_bad_input_exit_2(analysed_run, tmp_path):
    proc = run_main("spectral.retrain", analysed_run, "--ranks", "50", "--out", tmp_path / "x", "--no-progress")
    assert proc.returncode == 2 and "rank 50 is not available" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main("spectral.retrain", tmp_path, "--out", tmp_path / "y")
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


def test_public_examples_stay_out_of_private_training_and_its_accounting(analysed_run, tmp_path, monkeypatch):
    import spectral.retrain.run as retrain_run
    from spectral.dp.data import load_data

    prepared, real = [], retrain_run.prepare

    def spy(cfg, *args, **kwargs):
        t = real(cfg, *args, **kwargs)
        prepared.append((cfg.noise_multiplier == 0.0, kwargs["split"][0], t.plan))
        return t

    monkeypatch.setattr(retrain_run, "prepare", spy)
    args = ["--ranks", 3, "--seeds", 1, "--steps", 2, "--eval-every", 2, "--no-progress", "--no-full"]
    r = run_main("spectral.retrain", analysed_run, *args, "--subspace-from", "public", "--public-size", 60)
    assert r.returncode == 0, r.stderr
    train, _, _ = load_data(str(json.loads((analysed_run / "manifest.json").read_text())["config"]["data"]))
    (public,) = [split for non_private, split, _ in prepared if non_private]
    (private,) = [(split, plan) for non_private, split, plan in prepared if not non_private]
    assert public.texts == train.texts[:60]  # the public part: the first 60 training examples
    assert private[0].texts == train.texts[60:]  # ... which private training never sees
    assert private[1].n_train == len(train) - 60  # ... nor counts: q = B / n over the private part only
    assert private[1].sample_rate == pytest.approx(16 / (len(train) - 60))


def test_coordinates_clipping_at_finite_c_equals_a_loop_over_examples(tiny_model):
    """Each example's gradient in subspace coordinates, Vᵀ g_i, is clipped to C: against a plain loop."""
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 5, seed=2)
    chunks = text_chunks(tok, 3)
    coords = [Q.T @ g.numpy() for g in per_example_gradients(model, chunks)]
    norms = np.linalg.norm(coords, axis=1)
    C = float(np.median(norms))  # about half the examples are clipped
    expected = sum(z * min(1.0, C / (n + 1e-6)) for z, n in zip(coords, norms))
    engine = CoordinateEngine(
        model,
        _subspace64(Subspace(torch.from_numpy(Q))),
        optimizer="sgd",
        lr=0.0,
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=5.0,
        seed=0,
    )
    out = engine.step(chunks, lr=0.0)
    np.testing.assert_allclose(out.clipped.numpy() * 5.0, expected, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(out.per_example_norms.numpy(), norms, rtol=1e-7)


def test_public_subspace_study_command(cli, analysed_run, tmp_path):
    out = tmp_path / "study"
    args = [analysed_run, "--public-size", 40, 80, "--public-steps", 4, "--k", 3, "--out", out]
    proc = cli("experiments.public_subspace", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = pd.read_csv(out / "public_subspace_curves.csv")
    assert {"public projector, 40 examples", "public projector, 80 examples"} <= set(curves.projector)
    for _, c in curves.groupby("projector"):  # the norm outside a growing subspace never grows
        assert (np.diff(c.sort_values("k").rms) <= 1e-12).all()
    assert (out / "public_subspace.png").stat().st_size > 10_000
    n = store.open(analysed_run).n_steps
    in_sample = curves[curves.projector == "private, in-sample"]
    assert len(in_sample) and in_sample.k.max() <= n // 2  # past n/2 finite n bends it to 0: not drawn or fitted
    table = pd.read_csv(out / "public_subspace.csv")
    (out / "public_subspace.csv").unlink()
    assert cli("experiments.public_subspace", *args, "--redraw").returncode == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "public_subspace.csv"), table)  # the same table, not recomputed


# ---------------------------------------------------------------------- the update each mode applies
def _noise_replayed(generator_state, params, std):
    """The noise Opacus adds, drawn again from the generator's saved state (one normal draw per
    parameter, in order): the independent reference for "the noise part of the update"."""
    g = torch.Generator().manual_seed(0)
    g.set_state(generator_state)
    return torch.cat([torch.normal(0.0, std, size=p.shape, generator=g, dtype=p.dtype).reshape(-1) for p in params])


@pytest.mark.parametrize("complement", [False, True], ids=["top", "complement"])
def test_signal_mode_applies_the_projected_clipped_sum_plus_the_replayed_noise(tiny_model, complement):
    """``signal``: Δθ = −lr/B (P s + σC z) with s the clipped sum and z the generator's own draw, P = V Vᵀ
    (or I − V Vᵀ for the complement, the bulk); at σ = 0 the applied change lies in span(V) (or has no
    part in it) to rounding."""
    lr, B, C = 0.1, 8.0, 0.05
    for sigma in (0.0, 1.5):
        model, tok = tiny_model_of(tiny_model, "attention-qv")
        params = [p for p in model.parameters() if p.requires_grad]
        Q = _basis(_flat_params(model).numel(), 5)
        chunks = text_chunks(tok, 4)
        summed, _ = brute_force_clipped_sum(model, chunks, C)  # per-example loop, before the engine hooks in
        sub = _subspace64(Subspace(torch.from_numpy(Q)))
        engine = _engine(model, sigma=sigma, C=C, sub=sub.orthogonal_complement() if complement else sub, mode="signal")
        state = engine.noise_generator.get_state()
        before = _flat_params(model)
        engine.step(chunks, lr=lr)
        change = _flat_params(model) - before
        Qt = torch.from_numpy(Q)
        signal = Qt @ (Qt.T @ summed)
        signal = summed - signal if complement else signal
        if sigma == 0 and complement:
            assert (Qt.T @ change).norm() < 1e-6 * change.norm()
        elif sigma == 0:
            assert _outside(change, Q) < 1e-6  # 2.5e-8 measured; a misplaced projection gives ~1
        noise = _noise_replayed(state, params, sigma * C) if sigma else 0.0
        torch.testing.assert_close(change, -lr / B * (signal + noise), rtol=1e-6, atol=1e-12)


def test_signal_plus_noise_mode_applies_an_update_inside_the_subspace(tiny_model):
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 5)
    engine = _engine(model, sigma=2.0, C=0.05, sub=_subspace64(Subspace(torch.from_numpy(Q))), mode="signal+noise")
    before = _flat_params(model)
    engine.step(text_chunks(tok, 4), lr=0.1)
    change = _flat_params(model) - before
    assert change.norm() > 0 and _outside(change, Q) < 1e-6


def test_coordinates_mode_keeps_theta_at_theta0_plus_V_z(tiny_model):
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 4)
    engine = CoordinateEngine(
        model,
        _subspace64(Subspace(torch.from_numpy(Q))),
        optimizer="adam",
        lr=0.05,
        noise_multiplier=1.0,
        max_grad_norm=0.05,
        expected_batch_size=8.0,
        seed=0,
    )
    theta0 = _flat_params(model)
    for _ in range(3):
        engine.step(text_chunks(tok, 4), lr=0.05)
    z = engine.z.detach().numpy()
    assert np.abs(z).max() > 0
    np.testing.assert_allclose((_flat_params(model) - theta0).numpy(), Q @ z, rtol=1e-5, atol=1e-9)  # float32 basis


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_applied_update_is_the_optimizers_transform_of_the_private_row(tiny_model, optimizer):
    """What collect stores as ``private`` is what moves the model: SGD −lr·g; Adam's first step
    −lr·g/(|g| + eps) (bias-corrected moments m̂ = g, v̂ = g²)."""
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    lr = 0.01
    engine = DPEngine(
        model,
        clipping="ghost",
        optimizer=optimizer,
        lr=lr,
        noise_multiplier=1.0,
        max_grad_norm=0.05,
        expected_batch_size=8.0,
        seed=0,
    )
    before = _flat_params(model)
    out = engine.step(text_chunks(tok, 4), lr=lr)
    g = out.private.double()
    expected = -lr * g if optimizer == "sgd" else -lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(_flat_params(model) - before, expected, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------- the controls
def test_rank_0_applies_the_replayed_noise_alone(tiny_model):
    """rank 0 (noise only): the clipped gradient projected to nothing, Δθ = −lr/B · σC z exactly."""
    lr, B, C, sigma = 0.1, 8.0, 0.05, 1.5
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    params = [p for p in model.parameters() if p.requires_grad]
    d = _flat_params(model).numel()
    engine = _engine(model, sigma=sigma, C=C, sub=_subspace64(Subspace(torch.zeros(d, 0))), mode="signal")
    state, before = engine.noise_generator.get_state(), _flat_params(model)
    engine.step(text_chunks(tok, 4), lr=lr)
    noise = _noise_replayed(state, params, sigma * C)
    torch.testing.assert_close(_flat_params(model) - before, -lr / B * noise, rtol=1e-6, atol=1e-12)


def test_random_subspace_is_orthonormal_seeded_and_uncorrelated_with_a_fixed_direction():
    a, b, c = Subspace.random(4000, 10, seed=3), Subspace.random(4000, 10, seed=3), Subspace.random(4000, 10, seed=4)
    V = a.V.double().numpy()
    np.testing.assert_allclose(V.T @ V, np.eye(10), atol=1e-5)
    assert torch.equal(a.V, b.V) and not torch.equal(a.V, c.V)
    e = np.zeros(4000)
    e[0] = 1.0  # a uniformly random 10-dim subspace holds a fixed unit vector's energy 10/d on average
    energies = [np.sum((Subspace.random(4000, 10, seed=s).V.double().numpy().T @ e) ** 2) for s in range(200)]
    assert abs(np.mean(energies) / (10 / 4000) - 1) < 0.3


def test_cli_controls_share_batches_and_noise_and_name_their_variants(cli, analysed_run, tmp_path):
    """rank 0, a random subspace and another run's subspace: paired with the top-r runs (same seeds), named
    apart, and another run identical to this one gives exactly this run's top-r history."""
    import shutil

    common = ["--seeds", "1", "--steps", "4", "--eval-every", "2", "--no-progress"]
    top = cli("spectral.retrain", analysed_run, "--ranks", "0", "3", *common, "--out", tmp_path / "top")
    assert top.returncode == 0, top.stderr
    twin = tmp_path / "twin"  # another run with the same trajectory: its subspace must give the same updates
    shutil.copytree(analysed_run, twin, ignore=shutil.ignore_patterns("retrain", "figures"))
    summary = twin / "analysis" / "clipped" / "summary.json"
    summary.write_text(summary.read_text().replace(str(analysed_run.resolve()), str(twin.resolve())))
    for source, out in (("random", tmp_path / "random"), (str(twin), tmp_path / "other")):
        proc = cli(
            "spectral.retrain", analysed_run, "--ranks", "3", "--no-full", "--subspace-from", source, *common,
            "--out", out,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    h_top = pd.read_csv(tmp_path / "top" / "retrain_history.csv")
    h_random = pd.read_csv(tmp_path / "random" / "retrain_history.csv")
    h_other = pd.read_csv(tmp_path / "other" / "retrain_history.csv")
    assert set(h_top.variant) == {"rank 0 (noise only)", "rank 3", "full"}
    assert set(h_random.variant) == {"random 3"} and set(h_random.subspace_from) == {"random"}
    assert set(h_other.variant) == {"rank 3 of run_twin"}
    mine = h_top[h_top.variant == "rank 3"].reset_index(drop=True)
    np.testing.assert_array_equal(h_other.loss, mine.loss)  # same subspace, batches and noise: same run
    assert h_random.loss.iloc[0] == mine.loss.iloc[0]  # same model before the first step
    assert np.abs(h_random.loss.iloc[1:] - mine.loss.iloc[1:]).min() > 1e-8  # another subspace, other updates
    more = cli("spectral.retrain", analysed_run, "--ranks", "0", "3", *common[2:], "--seeds", "2",
                   "--out", tmp_path / "top")  # fmt: skip
    assert more.returncode == 0, more.stderr  # more seeds continue the setting
    h = pd.read_csv(tmp_path / "top" / "retrain_history.csv")
    assert set(h.seed) == {0, 1}
    final = h[(h.step == 4) & (h.variant == "rank 3")].accuracy
    ci = json.loads((tmp_path / "top" / "retrain_summary.json").read_text())["final_accuracy"]["rank 3"]["ci95"]
    half = {0.0: 0.0}.get(final.std(), 12.706 * final.std() / np.sqrt(2))  # t(0.975, 1 dof) = 12.706
    np.testing.assert_allclose(ci, [final.mean() - half, final.mean() + half], rtol=1e-4, atol=1e-12)
    proc = cli(
        "spectral.report", analysed_run, "--fit-range", "1", "6", "--retrain", tmp_path, "--out", tmp_path / "fig"
    )
    assert proc.returncode == 0, proc.stderr
    drawn = pd.read_csv(tmp_path / "fig" / "fig5_retrain.csv")  # the controls share the trajectory's panel
    assert set(drawn.panel) == {"signal-trajectory"} and len(set(drawn.variant)) == 5


def test_controls_refuse_what_they_cannot_do(analysed_run, tmp_path):
    proc = run_main("spectral.retrain", analysed_run, "--ranks", "0", "--mode", "coordinates", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "rank 0" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main("spectral.retrain", analysed_run, "--subspace-from", tmp_path / "nowhere", "--out", tmp_path / "y")
    assert proc.returncode == 2 and "nor a collect run directory" in proc.stderr


def test_subspace_basis_products_and_loading(tmp_path):
    from spectral.errors import SpectralError

    Q = _basis(50, 6, seed=2)
    np.save(tmp_path / "components.npy", Q.astype(np.float32))
    sub = Subspace.from_analysis(tmp_path, 4)
    assert (sub.d, sub.rank) == (50, 4) and sub.V.dtype == torch.float32
    np.testing.assert_array_equal(sub.V.numpy(), Q[:, :4].astype(np.float32))  # the first r columns, as stored
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(50))
    P = sub.V.double().numpy()
    projected = sub.project(g)
    assert projected.dtype == g.dtype  # the gradient's dtype is kept
    np.testing.assert_allclose(projected.numpy(), P @ (P.T @ g.numpy()), rtol=1e-5, atol=1e-6)
    G = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 50)))
    np.testing.assert_allclose(sub.coordinates(G).numpy(), G.numpy() @ P, rtol=1e-5, atol=1e-6)
    assert sub.to("cpu") is sub
    for bad_rank in (0, 7):
        with pytest.raises(SpectralError, match=f"rank {bad_rank} is not available"):
            Subspace.from_analysis(tmp_path, bad_rank)
    with pytest.raises(SpectralError, match="has no components.npy"):
        Subspace.from_analysis(tmp_path / "nowhere", 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "components.npy").write_bytes(b"not an array")
    with pytest.raises(SpectralError, match="not a readable .npy"):
        Subspace.from_analysis(tmp_path / "bad", 2)
    for shape in ((5,), (3, 5)):  # a basis is (d, r) with r <= d
        with pytest.raises(SpectralError, match="shape \\(d, r\\)"):
            Subspace(np.zeros(shape))


def test_subspace_rank_bounds_messages_and_device_moves(tmp_path):
    from spectral.errors import SpectralError

    np.save(tmp_path / "components.npy", _basis(30, 6).astype(np.float32))
    assert Subspace.from_analysis(tmp_path, 1).rank == 1 and Subspace.from_analysis(tmp_path, 6).rank == 6
    with pytest.raises(SpectralError, match="holds 6 components"):
        Subspace.from_analysis(tmp_path, 7)
    (tmp_path / "flat").mkdir()
    np.save(tmp_path / "flat" / "components.npy", np.zeros(30, dtype=np.float32))
    with pytest.raises(SpectralError, match="holds 0 components"):
        Subspace.from_analysis(tmp_path / "flat", 1)
    sub = Subspace.from_analysis(tmp_path, 3)
    moved = sub.to("meta")  # another device: a new subspace with its basis there, the original untouched
    assert moved is not sub and moved.V.device.type == "meta" and sub.V.device.type == "cpu"
    assert moved.V.shape == sub.V.shape


RETRAIN_ELSEWHERE = {  # RetrainConfig fields and the tests that set them and check the effect
    "ranks": "test_cli_retrains_every_variant_with_identical_accounting, test_cli_controls_…",
    "seeds": "test_cli_retrains_every_variant_with_identical_accounting (two seeds), test_cli_controls_… (more seeds)",
    "mode": "test_cli_public_subspace (coordinates, signal+noise)",
    "subspace_from": "test_cli_public_subspace, test_cli_controls_… (random, another run)",
    "steps": "test_cli_retrains_every_variant_with_identical_accounting (evaluations at 0, 2, 4)",
    "eval_every": "test_cli_retrains_every_variant_with_identical_accounting",
    "full": "test_cli_public_subspace (--no-full: no full variant)",
    "public_size": "test_public_examples_stay_out_of_private_training_and_its_accounting",
    "settings": "test_cli_non_private_setting_has_its_own_directory (noise_multiplier 0)",
    "public_steps": "below",
    "analysis": "below",
    "components": "test_controls_run_end_to_end_and_record_their_energy",
}


def test_controls_run_end_to_end_and_record_their_energy(analysed_run, tmp_path):
    """components 2-4, span-random 3 and the complement of the top 3 on the tiny run: each trains, is named
    apart, and records the share of the run's stored gradient energy its subspace holds, against a dense
    projection of the stored rows."""
    H = store.open(analysed_run).rows("clipped").astype(np.float64)
    V = np.load(analysed_run / "analysis" / "clipped" / "components.npy").astype(np.float64)
    share = lambda P: float(np.sum((H @ P) ** 2) / np.sum(H**2))  # noqa: E731
    common = ["--steps", "2", "--eval-every", "2", "--seeds", "1", "--no-full", "--no-progress"]
    cases = [
        (["--components", "2-4"], "components 2-4", share(V[:, 1:4])),
        (["--ranks", "3", "--subspace-from", "span-random"], "span-random 3", None),
        (["--ranks", "3", "--subspace-from", "complement"], "complement of top 3", 1 - share(V[:, :3])),
    ]
    for args, variant, expected in cases:
        out = tmp_path / variant.replace(" ", "_")
        proc = run_main("spectral.retrain", analysed_run, *args, *common, "--out", out)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "retrain_summary.json").read_text())
        assert list(summary["final_accuracy"]) == [variant]
        energy = summary["energy_captured"][variant]["all_steps"]
        if expected is not None:
            assert energy == pytest.approx(expected, rel=1e-4)
        else:  # inside the rows' span: more than a uniformly random 3-dim subspace's 3/d
            assert energy > 100 * 3 / H.shape[1]


def test_every_retrain_field_is_covered():
    import dataclasses

    from spectral.retrain import RetrainConfig

    assert set(RETRAIN_ELSEWHERE) == {f.name for f in dataclasses.fields(RetrainConfig)}


def test_public_steps_and_analysis_reach_the_computation(analysed_run, tmp_path, monkeypatch):
    import shutil

    import spectral.retrain.run as retrain_run
    from spectral.retrain import RetrainConfig, retrain

    steps_seen, real_public = [], retrain_run.public_subspace
    monkeypatch.setattr(
        retrain_run, "public_subspace", lambda *a, **kw: steps_seen.append(a[4]) or real_public(*a, **kw)
    )
    config = RetrainConfig(ranks=(2,), seeds=1, steps=1, eval_every=1, full=False, subspace_from="public",
                           public_size=40, public_steps=3)  # fmt: skip
    retrain(analysed_run, config, tmp_path / "public", progress=False, device="cpu")
    assert steps_seen == [3]

    other = tmp_path / "other-analysis"  # the same store's analysis, elsewhere, with its components permuted
    shutil.copytree(analysed_run / "analysis" / "clipped", other)
    components = np.load(other / "components.npy")
    np.save(other / "components.npy", components[:, ::-1].copy())
    loaded, real_load = [], Subspace.from_analysis
    monkeypatch.setattr(
        retrain_run.Subspace, "from_analysis", classmethod(lambda cls, d, r: loaded.append((d, r)) or real_load(d, r))
    )
    retrain(analysed_run, RetrainConfig(ranks=(2,), seeds=1, steps=1, eval_every=1, full=False, analysis=str(other)),
            tmp_path / "analysis", progress=False, device="cpu")  # fmt: skip
    assert loaded == [(other, 2)]


# ---------------------------------------------------------------------- the controls of issue 37
def test_complement_signal_plus_noise_keeps_the_noise_out_of_the_top_subspace(tiny_model):
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 5)
    sub = _subspace64(Subspace(torch.from_numpy(Q))).orthogonal_complement()
    engine = _engine(model, sigma=2.0, C=0.05, sub=sub, mode="signal+noise")
    before = _flat_params(model)
    engine.step(text_chunks(tok, 4), lr=0.1)
    change = _flat_params(model) - before
    assert change.norm() > 0 and (torch.from_numpy(Q).T @ change).norm() < 1e-6 * change.norm()


def test_span_random_lies_in_the_rows_span_and_components_are_a_band(tmp_path):
    rng = np.random.default_rng(0)
    H = rng.standard_normal((20, 300))
    V = Subspace.span_random(H, 6, seed=1).V.double().numpy()
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-5)
    P = np.linalg.pinv(H) @ H  # the projector onto the rows' span
    np.testing.assert_allclose(P @ V, V, atol=1e-5)
    assert np.allclose(V, Subspace.span_random(H, 6, seed=1).V.numpy())
    assert not np.allclose(V, Subspace.span_random(H, 6, seed=2).V.numpy())
    whole = Subspace.span_random(H, 20, seed=1).V.double().numpy()  # as many directions as rows: the whole span
    np.testing.assert_allclose(whole @ whole.T, P, atol=1e-5)
    with pytest.raises(SpectralError, match="span-random 21: the trajectory has only 20 stored steps"):
        Subspace.span_random(H, 21, seed=1)
    components = np.linalg.qr(rng.standard_normal((300, 12)))[0].astype(np.float32)
    np.save(tmp_path / "components.npy", components)
    band = Subspace.from_analysis(tmp_path, 4, first=5).V.numpy()
    np.testing.assert_array_equal(band, components[:, 4:8])
    with pytest.raises(SpectralError, match="components 10-13 are not available"):
        Subspace.from_analysis(tmp_path, 4, first=10)


def test_full_training_records_the_energy_of_the_whole_space(tmp_path):
    """The unrestricted variant's energy share is that of a subspace spanning R^d, computed the same way."""
    from helpers import write_store

    from spectral.retrain.run import energy_captured
    from spectral.store import open as open_store

    H = np.random.default_rng(0).standard_normal((10, 30)).astype(np.float32)
    write_store(tmp_path / "run", H)
    store = open_store(tmp_path / "run")
    whole = energy_captured(store, Subspace(torch.eye(30)))
    assert energy_captured(store, None) == pytest.approx(whole, rel=1e-6) == {"all_steps": 1.0, "second_half": 1.0}


def test_captured_energy_against_a_dense_projection():
    rng = np.random.default_rng(0)
    H = rng.standard_normal((10, 80))
    Q = np.linalg.qr(rng.standard_normal((80, 3)))[0]
    sub = Subspace(torch.from_numpy(Q))
    inside = np.sum((H @ Q) ** 2, axis=1)
    got = sub.captured_energy(H)
    assert got["all_steps"] == pytest.approx(inside.sum() / np.sum(H**2), rel=1e-5)
    assert got["second_half"] == pytest.approx(inside[5:].sum() / np.sum(H[5:] ** 2), rel=1e-5)
    assert sub.orthogonal_complement().captured_energy(H)["all_steps"] == pytest.approx(1 - got["all_steps"], rel=1e-5)
    nothing = Subspace(torch.zeros(80, 0))  # rank 0 (noise only): no energy; its complement all of it
    assert nothing.captured_energy(H) == {"all_steps": 0.0, "second_half": 0.0}
    assert nothing.orthogonal_complement().captured_energy(H) == {"all_steps": 1.0, "second_half": 1.0}


@pytest.mark.parametrize(
    "settings, variant, tag",
    [
        (dict(components="101-200"), "components 101-200", "signal-trajectory-c101-200"),
        (dict(subspace_from="span-random"), "span-random 100", "signal-span-random"),
        (dict(subspace_from="complement", mode="signal+noise"), "complement of top 100", "signal+noise-complement"),
    ],
)
def test_controls_are_named_apart(settings, variant, tag):
    config = RetrainConfig(ranks=(100,), **settings).validate()
    rank = config.band[1] - config.band[0] + 1 if config.band else 100
    assert config.variant(rank) == variant and config.tag == tag


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(components="200-101"), "1 <= A <= B"),
        (dict(components="x"), "look like 101-200"),
        (dict(components="1-10", subspace_from="random"), "subspace-from trajectory"),
        (dict(subspace_from="complement", mode="coordinates"), "signal or signal\\+noise"),
    ],
)
def test_bad_controls_are_one_clear_error(settings, message):
    with pytest.raises(SpectralError, match=message):
        RetrainConfig(**settings).validate()


def test_coordinates_engine_splits_the_batch_in_halves_as_the_dp_engine_does(tiny_model):
    """The step template gives the coordinates engine the ``sampling`` row too: (S_A − S_B)/B̄ in r
    coordinates, against each half's clipped sum from a loop over examples."""
    model, tok = tiny_model_of(tiny_model, "attention-qv")
    Q = _basis(_flat_params(model).numel(), 5, seed=2)
    chunks = text_chunks(tok, 3)
    coords = [Q.T @ g.numpy() for g in per_example_gradients(model, chunks)]
    norms = np.linalg.norm(coords, axis=1)
    C = float(np.median(norms))
    clipped = [z * min(1.0, C / (n + 1e-6)) for z, n in zip(coords, norms)]
    in_a = sum(len(labels) for _, labels in chunks[:1])
    s_a, s_b = sum(clipped[:in_a]), sum(clipped[in_a:])
    engine = CoordinateEngine(model, _subspace64(Subspace(torch.from_numpy(Q))), optimizer="sgd", lr=0.0,
                              noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=5.0, seed=0)  # fmt: skip
    out = engine.step(chunks, lr=0.0, split_at=1)
    np.testing.assert_allclose(out.sampling.numpy() * 5.0, s_a - s_b, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(out.clipped.numpy() * 5.0, s_a + s_b, rtol=1e-7, atol=1e-12)
