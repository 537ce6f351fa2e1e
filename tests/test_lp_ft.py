"""Linear probing then fine-tuning: combined parameter sets, `--init-from` (weights and composed
privacy), the budget split of the LP-vs-FT study, and the study script end to end."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
import pytest
from helpers import collect_args
from opacus.accountants import RDPAccountant

import spectral.store as store
from spectral.collect import CollectConfig
from spectral.dp.engine import trained_weights
from spectral.dp.models import load_model, parameter_layout, select_trainable
from spectral.dp.privacy import compose_epsilon, plan_privacy, privacy_history
from spectral.dp.training import prepare
from spectral.errors import SpectralError


def direct_epsilon(phases, delta):
    """An independent accountant stepped once per step of each (sigma, q, steps) phase."""
    acc = RDPAccountant()
    for sigma, q, steps in phases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta)


def test_joined_parameter_sets_train_the_union(tiny_model):
    model, _ = load_model(str(tiny_model), num_labels=2, seed=0)
    names = lambda params: {p["name"] for p in parameter_layout(select_trainable(model, params))}  # noqa: E731
    both = names("attention-qv+classifier")
    assert both == names("attention-qv") | names("classifier") and len(both) == 2 * 2 * 2 + 2
    for bad in ("lora+classifier", "classifier+classifier", "attention-qv+heads"):
        with pytest.raises(SpectralError, match="unknown params"):
            CollectConfig(params=bad).validate()


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_budget_split_composes_to_the_target(epsilon):
    study = importlib.import_module("experiments.lp_ft")
    split = study.budget_split(epsilon, 40, study.FRACTIONS, n_train=67_349, batch_size=256)
    assert list(split.lp_steps) == [0, 10, 20, 30, 40] and (split.lp_steps + split.ft_steps == 40).all()
    assert split.sigma.nunique() == 1
    for row in split.itertuples():
        assert row.epsilon_total == pytest.approx(epsilon, abs=0.01)
        phases = [(row.sigma, row.sample_rate, row.lp_steps), (row.sigma, row.sample_rate, row.ft_steps)]
        assert row.epsilon_total == pytest.approx(direct_epsilon(phases, row.delta), rel=1e-9)
        # each phase alone spends less than the total, and composition beats adding epsilons
        assert max(row.epsilon_lp, row.epsilon_ft) <= row.epsilon_total + 1e-12
        assert row.epsilon_total <= row.epsilon_lp + row.epsilon_ft + 1e-12 or min(row.lp_steps, row.ft_steps) == 0
    with pytest.raises(SpectralError, match=r"\[0, 1\]"):
        study.phase_steps(40, 1.5)


def test_calibration_after_a_prior_spends_the_total():
    common = dict(sampling="poisson", accountant="rdp", n_train=10_000, batch_size=100, max_grad_norm=1.0)
    first = plan_privacy(**common, steps=200, noise_multiplier=1.2)
    prior = [(first.noise_multiplier, first.sample_rate, 200)]
    second = plan_privacy(**common, steps=300, epsilon=4.0, prior=prior)
    total = direct_epsilon(prior + [(second.noise_multiplier, second.sample_rate, 300)], second.delta)
    assert total == pytest.approx(4.0, abs=0.006)
    # without the prior the same 300 steps could use less noise for the same epsilon
    assert plan_privacy(**common, steps=300, epsilon=4.0).noise_multiplier < second.noise_multiplier
    with pytest.raises(SpectralError, match="already spent"):
        plan_privacy(**common, steps=10, epsilon=0.1, prior=prior)
    assert math.isinf(compose_epsilon([(0.0, 0.01, 5), (1.0, 0.01, 5)], 1e-5))
    assert compose_epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize(
    "batch_size, steps, epsilon",
    [(19, 1000, 8.0), (5000, 20, 0.3)],
    ids=["sigma-below-1", "sigma-above-10"],
)
def test_calibration_after_a_prior_brackets_any_sigma(batch_size, steps, epsilon):
    """The paper's setting (q = 0.0019, 1000 steps, epsilon 8) needs sigma < 1, a tight budget at q = 1/2
    sigma > 10 (the bracket must grow): either way the prior and the run spend the target to the search's
    tolerance (0.005), composed by Opacus' accountant."""
    common = dict(sampling="poisson", accountant="rdp", n_train=10_000, batch_size=batch_size, max_grad_norm=1.0)
    prior = [(30.0, batch_size / 10_000, 5)]
    plan = plan_privacy(**common, steps=steps, epsilon=epsilon, prior=prior)
    total = direct_epsilon(prior + [(plan.noise_multiplier, plan.sample_rate, steps)], plan.delta)
    assert epsilon - 0.005 <= total <= epsilon
    assert (plan.noise_multiplier < 1) if batch_size == 19 else (plan.noise_multiplier > 10)


def test_the_already_spent_check_uses_the_runs_accountant():
    """A prior whose RDP bound exceeds the target but whose PRV epsilon does not is not refused under PRV."""
    prior = [(0.8, 0.01, 300)]
    rdp, prv = (compose_epsilon(prior, 1e-5, a) for a in ("rdp", "prv"))
    assert prv < rdp
    target = (prv + rdp) / 2
    common = dict(sampling="poisson", n_train=10_000, batch_size=100, max_grad_norm=1.0, delta=1e-5, prior=prior)
    with pytest.raises(SpectralError, match="already spent"):
        plan_privacy(**common, accountant="rdp", steps=10, epsilon=target)
    plan = plan_privacy(**common, accountant="prv", steps=10, epsilon=target)
    assert compose_epsilon([*prior, (plan.noise_multiplier, 0.01, 10)], 1e-5, "prv") <= target


def test_privacy_history_is_the_prior_runs_then_this_runs_own_mechanisms():
    """What a store spent: the manifest's prior mechanisms, then the checkpoint's own accountant history; a
    sigma-0 store written before such steps were recorded counts its steps as (0, q, n)."""
    from types import SimpleNamespace

    def fake(dp, accountant, n_steps):
        meta = {"accountant": accountant} if accountant is not None else {}
        return SimpleNamespace(manifest={"dp": dp}, checkpoint=SimpleNamespace(meta=meta), n_steps=n_steps)

    prior = [[1.1, 0.01, 6]]
    assert privacy_history(fake({"prior": prior}, [[0.9, 0.02, 4]], 4)) == [(1.1, 0.01, 6), (0.9, 0.02, 4)]
    assert privacy_history(fake({"noise_multiplier": 0, "sample_rate": 0.02}, None, 5)) == [(0.0, 0.02, 5)]
    assert privacy_history(fake({"noise_multiplier": 0, "sample_rate": 0.02}, None, 0)) == []
    assert privacy_history(fake({"noise_multiplier": 1.0, "sample_rate": 0.02}, None, 5)) == []
    no_dp = fake({}, [[0.9, 0.02, 4]], 4)
    del no_dp.manifest["dp"]  # a manifest without DP settings: its own history only
    assert privacy_history(no_dp) == [(0.9, 0.02, 4)]


def test_init_from_loads_the_trained_weights_and_composes_privacy(cli, tiny_model, tiny_data, tmp_path):
    lp, ft = tmp_path / "lp", tmp_path / "ft"
    r = cli(
        *lp_collect_args(
            tiny_model,
            tiny_data,
            lp,
            "--params",
            "classifier",
            "--steps",
            "6",
            "--lr",
            "0.05",
            "--noise-multiplier",
            "1.1",
        )
    )
    assert r.returncode == 0, r.stderr
    lp_store = store.open(lp)
    trained = trained_weights(lp_store)
    assert set(trained) == {"classifier.weight", "classifier.bias"}

    cfg = CollectConfig(
        model=str(tiny_model),
        data=str(tiny_data),
        params="attention-qv+classifier",
        init_from=str(lp),
        batch_size=16,
        steps=4,
        noise_multiplier=1.1,
        eval_every=0,
    )
    t = prepare(cfg.validate())
    weights = dict(t.model.named_parameters())
    fresh, _ = load_model(str(tiny_model), num_labels=2, seed=0)
    for name, value in fresh.named_parameters():
        expected = trained[name] if name in trained else value.detach().numpy()
        np.testing.assert_array_equal(weights[name].detach().numpy(), expected)
    assert not np.allclose(trained["classifier.weight"], fresh.classifier.weight.detach().numpy())
    assert t.plan.prior == [[1.1, lp_store.manifest["dp"]["sample_rate"], 6]]

    # the CLI: the FT store's epsilon is both phases composed; --epsilon is then the total budget
    r = cli(
        *lp_collect_args(
            tiny_model,
            tiny_data,
            ft,
            "--params",
            "attention-qv+classifier",
            "--steps",
            "4",
            "--init-from",
            lp,
            "--noise-multiplier",
            "1.1",
        )
    )
    assert r.returncode == 0, r.stderr
    s = store.open(ft)
    q, delta = s.manifest["dp"]["sample_rate"], s.manifest["dp"]["delta"]
    assert s.steps.epsilon.iloc[-1] == pytest.approx(direct_epsilon([(1.1, q, 10)], delta), rel=1e-9)
    assert s.steps.epsilon.iloc[0] > lp_store.steps.epsilon.iloc[-1]
    assert privacy_history(s) == [(1.1, q, 6), (1.1, q, 4)]
    total = tmp_path / "total"
    r = cli(*lp_collect_args(tiny_model, tiny_data, total, "--steps", "4", "--init-from", lp, "--epsilon", "9"))
    assert r.returncode == 0, r.stderr
    assert store.open(total).steps.epsilon.iloc[-1] == pytest.approx(9.0, abs=0.01)


def test_init_from_bad_input_is_one_clear_error(cli, tiny_model, tiny_model_dropout, tiny_data, tmp_path):
    lp = tmp_path / "lp"
    assert cli(*lp_collect_args(tiny_model, tiny_data, lp, "--params", "classifier", "--steps", "2")).returncode == 0
    cases = [
        (["--init-from", tmp_path / "missing"], "no such store"),
        (["--init-from", lp, "--epsilon", "0.01"], "already spent"),
        (["--init-from", lp, "--model", tiny_model_dropout], "not " + str(tiny_model_dropout)),
    ]
    for extra, message in cases:
        r = cli(*lp_collect_args(tiny_model, tiny_data, tmp_path / "out", "--steps", "2", *extra))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_study_script_runs_and_resumes(cli, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "study"
    args = [
        "experiments.lp_ft",
        out,
        "--model",
        tiny_model,
        "--data",
        tiny_data,
        "--steps",
        "16",
        "--batch-size",
        "32",
        "--physical-batch-size",
        "32",
        "--epsilons",
        "3",
        "8",
        "--fractions",
        "0",
        "0.5",
        "1",
        "--max-length",
        "32",
        "--lp-lr",
        "0.05",
        "--ft-lr",
        "0.005",
        "--no-progress",
    ]
    r = cli(*args[:-1], "--lp-optimizer", "momentum")  # a bad phase setting stops before any training
    assert r.returncode == 2 and "momentum" in r.stderr and "Traceback" not in r.stderr and not out.exists()
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    utility = pd.read_csv(out / "lp_ft_utility.csv")
    assert len(utility) == 6 and set(utility.f) == {0, 0.5, 1}
    for row in utility.itertuples():
        assert row.epsilon_spent == pytest.approx(row.epsilon, abs=0.01)  # the stored, composed epsilon
        assert row.epsilon_spent == pytest.approx(row.epsilon_total, rel=1e-6)
        assert 0 <= row.test_accuracy <= 1
    half = utility[(utility.f == 0.5) & (utility.epsilon == 8)].iloc[0]
    assert half.epsilon_after_lp == pytest.approx(half.epsilon_lp, rel=1e-6) and half.epsilon_after_lp < 8
    phases = pd.read_csv(out / "lp_ft_phases.csv").set_index("phase")
    lp_d = store.open(out / "eps8" / "f1" / "seed0" / "lp").d
    assert phases.loc["LP alone (f = 1)", "d"] == lp_d == 2 * 16  # the similarity head's two label rows
    assert phases.loc["FT alone (f = 0)", "d"] > lp_d
    assert (out / "lp_ft.png").is_file() and (out / "lp_ft_spectra.csv").is_file()
    # a rerun keeps every finished phase: no store is rewritten
    before = {p: p.stat().st_mtime_ns for p in out.glob("eps*/f*/seed0/*/manifest.json")}
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("eps*/f*/seed0/*/manifest.json")}
    pd.testing.assert_frame_equal(pd.read_csv(out / "lp_ft_utility.csv"), utility)


def lp_collect_args(*args, **kwargs):
    return collect_args(*args, eval_every=0, **kwargs)
