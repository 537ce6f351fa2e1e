"""Behaviours a user meets at the edges: data inputs, privacy extremes, resumes and checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import run_main
from helpers import power_law_trajectory, write_store

import spectral.store as store
from spectral.analyse import principal_components
from spectral.dp.data import load_data
from spectral.dp.privacy import PrivacyLedger, batch_indices, compose_epsilon, plan_privacy
from spectral.errors import SpectralError

# ------------------------------------------------------------------ data inputs


def frame(n=50, seed=0) -> pd.DataFrame:
    """Reviews with string labels under non-default column names."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"body": [f"text {seed} {i}" for i in range(n)], "stars": rng.choice(["neg", "pos"], n)})


def write(df: pd.DataFrame, path):
    if path.suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_every_file_format_and_a_directory_load_the_same_examples(tmp_path, suffix):
    train, dev = frame(40, 0), frame(10, 1)
    folder = tmp_path / "dir"
    folder.mkdir()
    write(train, folder / f"train{suffix}")
    write(dev, folder / f"dev{suffix}")
    tr, dv, info = load_data(str(folder), text_column="body", label_column="stars")
    assert tr.texts == list(train.body) and dv.texts == list(dev.body)
    classes = sorted(set(train.stars))
    assert info["classes"] == classes  # one label encoding, shared by both splits
    np.testing.assert_array_equal(tr.labels, [classes.index(s) for s in train.stars])
    np.testing.assert_array_equal(dv.labels, [classes.index(s) for s in dev.stars])

    # one file: a held-out 10% becomes the dev split; together they are the file
    single = write(train, tmp_path / f"all{suffix}")
    tr1, dv1, _ = load_data(str(single), text_column="body", label_column="stars")
    assert len(dv1) == 4 and sorted(tr1.texts + dv1.texts) == sorted(train.body)


def test_columns_must_exist_or_be_named(tmp_path):
    path = write(frame(), tmp_path / "d.csv")
    with pytest.raises(SpectralError, match="no text column found.*--text-column"):
        load_data(str(path))
    with pytest.raises(SpectralError, match="no label column 'nope'"):
        load_data(str(path), text_column="body", label_column="nope")


def test_dev_labels_absent_from_train_and_a_single_class_are_refused(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    train = frame(20)
    write(train.assign(stars="pos"), folder / "train.csv")
    write(frame(5), folder / "dev.csv")
    with pytest.raises(SpectralError, match="only one class"):
        load_data(str(folder), "body", "stars")
    write(train, folder / "train.csv")
    write(frame(5).assign(stars="meh"), folder / "dev.csv")
    with pytest.raises(SpectralError, match=r"labels \['meh'\] do not occur in train"):
        load_data(str(folder), "body", "stars")


def test_empty_dev_split_with_evaluation_on_is_one_clear_error(tmp_path, tiny_model, tiny_data):
    folder = tmp_path / "d"
    folder.mkdir()
    rows = pd.read_csv(tiny_data)
    rows.to_csv(folder / "train.csv", index=False)
    rows.head(0).to_csv(folder / "dev.csv", index=False)
    common = ["--model", tiny_model, "--data", folder, "--steps", 2, "--batch-size", 8, "--objective", "classifier"]
    r = run_main("spectral.collect", tmp_path / "run", *common, "--eval-every", 5)
    assert r.returncode == 2 and "the dev split is empty; pass --eval-every 0" in r.stderr
    assert "Traceback" not in r.stderr
    assert run_main("spectral.collect", tmp_path / "run", *common, "--eval-every", 0, "--no-progress").returncode == 0


def test_a_malformed_toml_config_is_one_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("lr = 1e-3\nsteps = [unclosed\n")
    r = run_main("spectral.collect", tmp_path / "run", "--config", config)
    assert r.returncode == 2 and "is not valid TOML" in r.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ resume


def test_resume_of_a_complete_store_changes_nothing_and_resume_with_overwrite_is_refused(
    tmp_path, tiny_model, tiny_data
):
    run = tmp_path / "run"
    args = ["--model", tiny_model, "--data", tiny_data, "--steps", 3, "--batch-size", 8, "--no-progress"]
    assert run_main("spectral.collect", run, *args, "--objective", "classifier").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    r = run_main("spectral.collect", run, "--resume", "--no-progress")
    assert r.returncode == 0 and "already complete (3 steps); nothing to resume" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    r = run_main("spectral.collect", run, "--resume", "--overwrite")
    assert r.returncode == 2 and "exclude each other" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_a_stale_gram_checkpoint_is_not_reused_after_the_store_grew(tmp_path):
    H = power_law_trajectory(n=30, d=500, seed=3)
    s = write_store(tmp_path / "run", H[:20])
    principal_components(s, 5, method="gram", checkpoint_dir=tmp_path / "ckpt")
    writer, _ = store.StoreWriter.resume(tmp_path / "run")
    for i in range(20, 30):
        writer.append(i, {"clipped": H[i]}, {"loss": 0.0})
    writer.commit(status="complete")
    writer.close()
    grown = principal_components(store.open(tmp_path / "run"), 5, method="gram", checkpoint_dir=tmp_path / "ckpt")
    exact = np.linalg.svd(H.astype(np.float64), compute_uv=False)[:5] ** 2
    np.testing.assert_allclose(grown.eigenvalues, exact, rtol=1e-6)
    assert grown.passes == 2  # the Gram pass ran again on the 30 rows


def test_an_interrupted_randomized_solve_resumes_from_its_last_iteration(tmp_path, monkeypatch):
    from spectral.analyse.matrix import TrajectoryMatrix

    s = write_store(tmp_path / "run", power_law_trajectory(n=40, d=800, slope=0.5, seed=1))
    real, calls, die_at = TrajectoryMatrix.hht, [], [-1]

    def counting_hht(self, Q):
        calls.append(1)
        if len(calls) == die_at[0]:
            raise KeyboardInterrupt
        return real(self, Q)

    monkeypatch.setattr(TrajectoryMatrix, "hht", counting_hht)
    reference = principal_components(s, 5, method="randomized", n_iter=4, seed=0)
    uninterrupted, die_at[0] = len(calls), 3
    calls.clear()
    kw = dict(method="randomized", n_iter=4, seed=0, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        principal_components(s, 5, **kw)  # killed in the third power iteration; two are saved
    calls.clear()
    die_at[0] = -1
    resumed = principal_components(s, 5, **kw)
    np.testing.assert_allclose(resumed.eigenvalues, reference.eigenvalues, rtol=1e-10)
    assert len(calls) == uninterrupted - 2  # the two saved iterations are not redone


# ------------------------------------------------------------------ privacy extremes

SST2 = dict(sampling="poisson", accountant="rdp", n_train=67_349, batch_size=128, steps=1000, max_grad_norm=0.1)


def test_an_unreachable_tiny_epsilon_is_refused():
    with pytest.raises(SpectralError, match="cannot reach epsilon=1e-06"):
        plan_privacy(**SST2, epsilon=1e-6)


@pytest.mark.parametrize(
    "accountant, epsilon", [("rdp", 0.5), ("rdp", 8.0), ("rdp", 1000.0), ("prv", 0.5)]
)  # PRV at 8: test_privacy
def test_the_planned_sigma_spends_the_target_epsilon(accountant, epsilon):
    plan = plan_privacy(**{**SST2, "accountant": accountant}, epsilon=epsilon)
    spent = compose_epsilon([(plan.noise_multiplier, plan.sample_rate, 1000)], plan.delta, accountant)
    assert epsilon - 0.01 * max(1, epsilon) <= spent <= epsilon + 0.01
    assert plan.noise_multiplier > 0


@pytest.mark.parametrize("given", [{"epsilon": 1000.0}, {"noise_multiplier": 0.05}])
def test_prv_refuses_an_epsilon_whose_grid_would_exhaust_memory(given):
    with pytest.raises(SpectralError, match="use --accountant rdp above epsilon 50"):
        plan_privacy(**{**SST2, "accountant": "prv"}, **given)  # 1000: over 20 GB before this check


def test_an_explicit_delta_is_used_and_a_smaller_one_costs_noise():
    default = plan_privacy(**SST2, epsilon=8.0)
    assert default.delta == pytest.approx(67_349**-1.1)
    strict = plan_privacy(**SST2, epsilon=8.0, delta=1e-9)
    assert strict.delta == 1e-9 and strict.noise_multiplier > default.noise_multiplier
    assert compose_epsilon([(strict.noise_multiplier, strict.sample_rate, 1000)], 1e-9) == pytest.approx(8.0, abs=0.01)


def test_shuffle_batches_partition_each_epoch_when_n_is_not_a_multiple_of_the_batch():
    plan = plan_privacy(**{**SST2, "sampling": "shuffle", "n_train": 1000, "batch_size": 64, "steps": 45}, epsilon=8)
    assert plan.steps_per_epoch == 15  # 1000 // 64; the last 40 examples of each permutation rest
    for epoch in range(3):
        batches = [batch_indices(plan, 0, epoch * 15 + k) for k in range(15)]
        seen = np.concatenate(batches)
        assert all(len(b) == 64 for b in batches) and len(np.unique(seen)) == len(seen) == 960
    ledger = PrivacyLedger(plan)
    for step in range(45):
        ledger.record_step(step)
    assert ledger.history() == [(plan.noise_multiplier, 1.0, 3)]  # one full mechanism per epoch


def test_the_halves_are_fair_coin_flips_of_the_batch_a_pure_function_of_seed_and_step():
    """Each example of a step's batch joins half A with probability 1/2 (the sampling stream's estimate
    assumes it): over 200 steps of about 100 examples the share is 1/2 within 4 standard errors and neither
    half is ever all of a batch; the same (seed, step) gives the same halves, another seed others; a run that
    continues another draws the halves of its own steps, not the first run's."""
    from spectral.dp.privacy import half_split

    plan = plan_privacy(sampling="poisson", accountant="rdp", n_train=5000, batch_size=100, steps=200,
                        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, epsilon=None)  # fmt: skip
    masks = [half_split(plan, 0, step, batch_indices(plan, 0, step)) for step in range(200)]
    share = np.concatenate(masks).mean()
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / sum(map(len, masks)))
    assert all(0 < m.sum() < len(m) for m in masks)
    batch = batch_indices(plan, 0, 7)
    np.testing.assert_array_equal(half_split(plan, 0, 7, batch), masks[7])
    assert (half_split(plan, 1, 7, batch) != masks[7]).any()
    later = dataclasses.replace(plan, prior=[(1.0, plan.sample_rate, 7)])
    np.testing.assert_array_equal(half_split(later, 0, 0, batch), masks[7])


def test_prv_end_to_end_and_after_a_prior_run(tmp_path, tiny_model, tiny_data):
    common = ["--model", tiny_model, "--data", tiny_data, "--objective", "classifier", "--batch-size", 16]
    common += ["--accountant", "prv", "--eval-every", 0, "--no-progress"]
    assert run_main("spectral.collect", tmp_path / "a", *common, "--steps", 6, "--epsilon", 3).returncode == 0
    first = store.open(tmp_path / "a")
    assert first.steps.epsilon.iloc[-1] == pytest.approx(3.0, abs=0.02)
    r = run_main(
        "spectral.collect", tmp_path / "b", *common, "--steps", 6, "--epsilon", 5, "--init-from", tmp_path / "a"
    )
    assert r.returncode == 0, r.stderr
    second = store.open(tmp_path / "b")
    dp = second.manifest["dp"]
    total = compose_epsilon(
        [tuple(h) for h in dp["prior"]] + [(dp["noise_multiplier"], dp["sample_rate"], 6)], dp["delta"], "prv"
    )
    assert total == pytest.approx(5.0, abs=0.02) and second.steps.epsilon.iloc[-1] == pytest.approx(total, rel=1e-6)
    assert dp["prior"][0][2] == 6  # the first run's 6 mechanisms
