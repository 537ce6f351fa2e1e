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
    covered = set(ANALYSE_CASES) | {"dask", "batch_size", "batch_estimator", "groups"}  # distributed, batch, groups
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


# ---------------------------------------------------------------------- the toy
def _toy_base(**overrides):
    from spectral.toy import ToyConfig

    base = dict(dims=(6,), modes=("sqrt",), steps=(4,), lrs=(0.1,), seeds=(0,), n_train=300, n_test=200)
    return ToyConfig(**{**base, **overrides})


TOY_CASES = {
    "dims": dict(dims=(3, 9)),
    "modes": dict(modes=("const", "linear")),
    "steps": dict(steps=(2, 8)),
    "lrs": dict(lrs=(0.01, 1.0)),
    "seeds": dict(seeds=(1, 4)),
    "epsilon": dict(epsilon=0.5),
    "delta": dict(delta=1e-3),
    "g0": dict(g0=1.0),
    "n_train": dict(n_train=150),
    "n_test": dict(n_test=77),
    "accountant": dict(accountant="rdp"),
    "seed_code_const": dict(modes=("const",), seed_code_const=True),
    "data_seed": dict(data_seed=5),
}


def test_every_toy_field_is_covered():
    from spectral.toy import ToyConfig

    assert set(TOY_CASES) == {f.name for f in dataclasses.fields(ToyConfig)}


@pytest.mark.parametrize("field", sorted(TOY_CASES))
def test_toy_options_reach_the_computation(field):
    """Each row's noise, optimum and grid point equal the geometric-median functions called directly with
    the config's values (the noise: sensitivity x noise multiplier; the optimum: f* on the data drawn)."""
    import torch

    from spectral.toy import geomedian as gm
    from spectral.toy.grid import run_grid

    config = _toy_base(**TOY_CASES[field])
    runs = run_grid(config, progress=False, dtype=torch.float64).runs
    grid = {(m, d, T, lr, s) for m in config.modes for d in config.dims for T in config.steps
            for lr in config.lrs for s in config.seeds}  # fmt: skip
    assert set(zip(runs["mode"], runs.d, runs["T"], runs.lr, runs.seed)) == grid
    data = gm.ToyData.sample(config.n_train, config.n_test, seed=config.data_seed)
    for row in runs.itertuples():
        a = gm.coefficients(row.d, row.mode, config.g0, config.seed_code_const)
        sens = gm.sensitivity(a, config.n_train, config.g0, seed_code=config.seed_code_const)
        sigma = gm.noise_multiplier(config.epsilon, config.delta, row.T, config.accountant)
        assert row.noise_std == pytest.approx(sens * sigma, rel=1e-12)
        _, f_star = gm.optimum(a, data.train)
        assert row.train_loss - row.train_excess == pytest.approx(f_star, rel=1e-9)
    if field == "n_test":  # the test loss is the loss on n_test fresh points
        base = run_grid(_toy_base(), progress=False, dtype=torch.float64).runs
        assert not np.allclose(runs.test_loss, base.test_loss) and np.allclose(runs.train_loss, base.train_loss)


# ---------------------------------------------------------------------- collect (what prepare builds)
COLLECT_ELSEWHERE = {  # fields whose effect shows in the stored run, tested in these files
    "probe_batches": "test_probes (the probe streams, nested prefixes, the trajectory unchanged)",
    "streams": "test_collect, test_batch (the stored streams)",
    "dtype": "test_edge_cases, test_scale (float16 / bfloat16 stores)",
    "eval_every": "test_collect (eval.csv rows)",
    "checkpoint_every": "test_collect (resume from a checkpoint)",
    "shard_mb": "below (the manifest's shard rows)",
    "init_from": "test_lp_ft, test_behaviours (a run started from another run's weights)",
    "data": "test_behaviours (the resolution order)",
    "text_column": "test_behaviours",
    "label_column": "test_behaviours, test_collect",
    "label_text": "test_objectives",
    "template": "test_objectives",
    "pooling": "test_objectives, test_engine",
    "lora_rank": "test_collect (LoRA's parameter count)",
}
COLLECT_CASES = {
    "model": None,  # the fixture's tiny model in every case
    "train_size": dict(train_size=40),
    "eval_size": dict(eval_size=10),
    "max_length": dict(max_length=12),
    "objective": dict(objective="similarity"),
    "params": dict(params="attention-qv+classifier"),
    "optimizer": dict(optimizer="sgd"),
    "lr": dict(lr=0.05),
    "lr_schedule": dict(lr_schedule="constant"),
    "steps": dict(steps=7),
    "batch_size": dict(batch_size=24),
    "physical_batch_size": dict(physical_batch_size=5),
    "epsilon": dict(epsilon=2.0),
    "delta": dict(delta=1e-3),
    "noise_multiplier": dict(noise_multiplier=0.7),
    "max_grad_norm": dict(max_grad_norm=0.3),
    "clipping": dict(clipping="per-sample"),
    "sampling": dict(sampling="shuffle"),
    "accountant": dict(accountant="prv"),
    "seed": dict(seed=3),
}


def test_every_collect_field_is_covered():
    from spectral.dp.config import CollectConfig

    assert set(COLLECT_CASES) | set(COLLECT_ELSEWHERE) == {f.name for f in dataclasses.fields(CollectConfig)}


@pytest.mark.parametrize("field", sorted(k for k, v in COLLECT_CASES.items() if v))
def test_collect_options_reach_the_training_setup(tiny_model, tiny_data, field):
    """``prepare`` (what collect trains with) against the functions it calls, given the field's value."""
    from spectral.dp.config import CollectConfig
    from spectral.dp.data import load_split
    from spectral.dp.privacy import batch_indices, plan_privacy
    from spectral.dp.training import prepare

    base = dict(model=str(tiny_model), data=str(tiny_data), steps=5, batch_size=16, physical_batch_size=8)
    cfg = CollectConfig(**{**base, **COLLECT_CASES[field]}).validate()
    t = prepare(cfg)
    train, dev, _ = load_split(cfg)
    assert t.n_train == len(train) and t.n_dev == len(dev)
    plan = plan_privacy(
        sampling=cfg.sampling, accountant=cfg.accountant, n_train=len(train), batch_size=cfg.batch_size,
        steps=cfg.steps, max_grad_norm=cfg.max_grad_norm, epsilon=cfg.epsilon, delta=cfg.delta,
        noise_multiplier=cfg.noise_multiplier,
    )  # fmt: skip
    assert t.plan.noise_multiplier == pytest.approx(plan.noise_multiplier, rel=1e-9)
    assert (t.plan.sampling, t.plan.accountant, t.plan.delta) == (plan.sampling, plan.accountant, plan.delta)
    chunks = t.chunks(2)
    assert sorted(len(labels) for _, labels in chunks)[-1] <= cfg.physical_batch_size
    assert sum(len(labels) for _, labels in chunks) == len(batch_indices(t.plan, cfg.seed, 2))
    assert max(inputs["input_ids"].shape[1] for inputs, _ in chunks) <= cfg.max_length
    assert [cfg.learning_rate(s) for s in (0, 3)] == [
        cfg.lr,
        cfg.lr * (1 - 3 / cfg.steps) if cfg.lr_schedule == "linear" else cfg.lr,
    ]
    engine = t.engine
    assert type(engine.optimizer.original_optimizer).__name__.lower() == cfg.optimizer
    assert (
        engine.clipping == t.cfg.clipping != "auto" and engine.max_grad_norm == cfg.max_grad_norm
    )  # auto: decided once
    assert engine.optimizer.noise_multiplier == pytest.approx(plan.noise_multiplier, rel=1e-9)
    trained = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trained) == ("classifier" in cfg.params)
    if field == "objective":
        default = prepare(CollectConfig(**base).validate())
        assert type(t.model).__name__ != type(default.model).__name__ or t.d != default.d
    if field == "seed":
        other = prepare(CollectConfig(**base).validate())
        assert not np.array_equal(batch_indices(t.plan, 3, 0), batch_indices(other.plan, 0, 0))
        assert engine.noise_generator.initial_seed() != other.engine.noise_generator.initial_seed()


def test_shard_mb_sets_the_shard_rows(tiny_model, tiny_data, tmp_path):
    from spectral.collect import collect
    from spectral.dp.config import CollectConfig
    from spectral.store.format import shard_rows_for

    base = dict(model=str(tiny_model), data=str(tiny_data), steps=4, batch_size=8, physical_batch_size=8, eval_every=0)
    rows = {}
    for mb in (1, 64):
        cfg = CollectConfig(**base, shard_mb=mb, checkpoint_every=10_000).validate()
        manifest = store_mod.open(collect(cfg, tmp_path / f"mb{mb}", progress=False, device="cpu")).manifest
        rows[mb] = manifest["shard_rows"]
        assert rows[mb] == shard_rows_for(manifest["d"], cfg.dtype, mb, cfg.checkpoint_every)
    assert rows[1] != rows[64]
