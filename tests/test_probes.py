"""Probe batches (spectral.dp.probes): nested prefix means against a loop over examples, the training
trajectory unchanged by them, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LABELS, TEXTS, brute_force_clipped_sum, clipping_engine, tiny_model_of

import spectral.store as store
from spectral.collect import collect
from spectral.dp import probes
from spectral.dp.config import CollectConfig, parse_probe_batches
from spectral.dp.data import TextData
from spectral.dp.training import Batcher
from spectral.errors import SpectralError


@pytest.mark.parametrize("clipping, params", [("ghost", "all"), ("per-sample", "all"), ("bookkeeping", "attention-qv")])
def test_probe_prefix_sums_equal_a_loop_over_examples(tiny_model, clipping, params):
    """Each nested prefix's clipped sum equals per-example gradients clipped and summed by a loop; the
    parameters and the next step's clipped sum are untouched by the probe."""
    model, tok = tiny_model_of(tiny_model, params)
    batcher = Batcher(model, tok, TextData(TEXTS, LABELS), 32)
    sample = np.array([5, 2, 7, 0, 3, 6, 1])  # a random order: prefixes are of the draw, not sorted
    sizes = [2, 3, 7]
    segments = [batcher.chunks(part, 2) for part in probes.segments(sample, sizes)]
    C = 0.05
    expected = [brute_force_clipped_sum(model, batcher.chunks(sample[:m], 8), C)[0] for m in sizes]
    step_expected, _ = brute_force_clipped_sum(model, batcher.chunks(np.arange(4), 8), C)
    engine = clipping_engine(model, clipping, C, 8.0)
    before = [p.detach().clone() for p in engine.params]
    sums = engine.probe_sums(segments)
    for got, want in zip(sums, expected):
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-9)
    assert all(torch.equal(a, p) for a, p in zip(before, engine.params))
    # the step after a probe sums its own batch only
    out = engine.step(batcher.chunks(np.arange(4), 3), lr=0.0)
    np.testing.assert_allclose(out.clipped.double().numpy() * 8, step_expected.numpy(), rtol=1e-5, atol=1e-9)


def test_probe_draws_are_distinct_reproducible_and_per_step():
    a, b = probes.draw(1000, 300, seed=1, step=4), probes.draw(1000, 300, seed=1, step=4)
    assert np.array_equal(a, b) and len(np.unique(a)) == 300
    assert not np.array_equal(a, probes.draw(1000, 300, seed=1, step=5))
    assert not np.array_equal(a, probes.draw(1000, 300, seed=2, step=4))
    parts = probes.segments(a, [10, 100, 300])
    assert [len(p) for p in parts] == [10, 90, 200] and np.array_equal(np.concatenate(parts), a)
    assert probes.probe_sizes(["clipped", "probe1000", "probe128", "sampling"]) == [128, 1000]


@pytest.mark.parametrize(
    "given, expected",
    [("128,256,1000", [128, 256, 1000]), (["8", "16"], [8, 16]), ([4, 40], [4, 40]), ("64", [64])],
)
def test_probe_batches_parse(given, expected):
    assert parse_probe_batches(given) == expected


@pytest.mark.parametrize("given", ["256,128", "0,8", "8,8", "a,b"])
def test_bad_probe_batches_are_one_clear_error(given):
    with pytest.raises(SpectralError, match="probe-batches"):
        CollectConfig(probe_batches=given).validate()


def _config(model, data, **extra) -> CollectConfig:
    settings = dict(
        model=str(model), data=str(data), steps=8, batch_size=16, physical_batch_size=8, eval_every=4,
        checkpoint_every=2, streams=["clipped", "private", "sampling"], seed=3,
    )  # fmt: skip
    return CollectConfig(**{**settings, **extra}).validate()


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory, tiny_model_dropout, tiny_data):
    """The same 8-step run (dropout on) without probes, with probes, and with probes stopped after 4
    steps and resumed."""
    root = tmp_path_factory.mktemp("probes")
    plain = collect(_config(tiny_model_dropout, tiny_data), root / "plain", progress=False)
    with_probes = _config(tiny_model_dropout, tiny_data, probe_batches=[8, 24, 60])
    probed = collect(with_probes, root / "probed", progress=False)
    resumed = root / "resumed"
    collect(with_probes, resumed, progress=False, stop_after=4)
    assert store.open(resumed).manifest["status"] == "stopped" and store.open(resumed).n_steps == 4
    collect(None, resumed, resume=True, progress=False)
    return store.open(plain), store.open(probed), store.open(resumed)


def test_probes_leave_the_training_trajectory_unchanged(probe_runs):
    plain, probed, _ = probe_runs
    assert probed.streams == ["clipped", "private", "sampling", "probe8", "probe24", "probe60"]
    for stream in ("clipped", "private", "sampling"):
        np.testing.assert_array_equal(plain.rows(stream), probed.rows(stream))
    np.testing.assert_array_equal(plain.table("eval").accuracy, probed.table("eval").accuracy)
    assert probed.manifest["probes"]["batch_sizes"] == [8, 24, 60]
    assert "not a DP release" in probed.manifest["probes"]["privacy"]


def test_probe_rungs_are_nested_means_of_one_draw(probe_runs):
    """Nested prefixes of one draw: the sum over 24 is the sum over 8 plus the next 16, so the
    rungs' means are consistent; a larger rung is closer to the others' common mean (less noise)."""
    _, probed, _ = probe_runs
    p8, p24, p60 = (probed.rows(f"probe{m}").astype(np.float64) for m in (8, 24, 60))
    rest = (24 * p24 - 8 * p8) / 16  # the 16 examples after the first 8: a mean of clipped gradients
    assert np.all(np.linalg.norm(rest, axis=1) <= probed.manifest["config"]["max_grad_norm"] * (1 + 1e-5))
    assert np.all(np.linalg.norm(p60, axis=1) <= probed.manifest["config"]["max_grad_norm"] * (1 + 1e-5))
    # rows differ from step to step and from the training row (another sample)
    assert not np.allclose(p60[0], p60[1]) and not np.allclose(p60, probed.rows("clipped"))


def test_a_probed_run_resumes_to_the_uninterrupted_rows(probe_runs):
    _, probed, resumed = probe_runs
    assert resumed.n_steps == 8 and resumed.manifest["status"] == "complete"
    for stream in probed.streams:
        np.testing.assert_allclose(resumed.rows(stream), probed.rows(stream), rtol=1e-5, atol=1e-8)


def test_a_probe_larger_than_the_training_set_is_one_clear_error(tiny_model, tiny_data, tmp_path):
    with pytest.raises(SpectralError, match="largest probe batch"):
        collect(_config(tiny_model, tiny_data, probe_batches=[8, 100000]), tmp_path / "run", progress=False)


def test_resume_accepts_the_settings_as_given_again(probe_runs):
    """``--resume`` with the settings repeated as typed: "128,256" for a stored [128, 256], and
    ``--clipping auto`` for the method auto chose, are the same settings; another value is not."""
    from spectral.collect import settings_that_differ

    _, probed, _ = probe_runs
    manifest = {**probed.manifest, "clipping": {"method": "bookkeeping", "reason": "auto: because ..."}}
    assert settings_that_differ(manifest, {"probe_batches": ["8,24,60"], "clipping": "auto"}) == {}
    assert settings_that_differ(manifest, {"probe_batches": "8,24"}) == {"probe_batches": "8,24"}
    requested = {"clipping": "auto"}
    assert settings_that_differ({**manifest, "clipping": {"reason": "requested"}}, requested) == requested
