"""The paper's size on one machine: two passes, held-out curves from the Gram matrix, tiled reads,
memory independent of d, old stores, and a collect step without per-step host work."""

from __future__ import annotations

import json
import math
import os
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from helpers import power_law_trajectory, write_store

import spectral.store as store_mod
from spectral.analyse import AnalyseConfig, analyse, principal_components, rlc
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.errors import SpectralError
from spectral.store.format import MANIFEST, shard_path, write_json
from spectral.store.migrate import retile


def reference_held_out(H, k, split, centered, ks):
    """G_k of the held-out rows under the top-k right singular vectors of the fit rows, dense float64."""
    H = H.astype(np.float64)
    fit, test = rlc.split_rows(len(H), split)
    F = H[fit] - H[fit].mean(0) if centered else H[fit]
    V = np.linalg.svd(F, full_matrices=False)[2][:k].T
    out = {}
    for kk in ks:
        P = V[:, :kk]
        out[kk] = np.linalg.norm(H[test] - (H[test] @ P) @ P.T, axis=1)
    return pd.DataFrame(out, index=pd.Index(test, name="step"))


@pytest.mark.parametrize("split", ["half", "alternate"])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("n", [40, 41])  # even and odd: the split's boundary
def test_held_out_from_the_gram_matrix_equals_a_dense_refit(split, centered, n):
    H = power_law_trajectory(n=n, d=500, slope=0.5)
    G = H.astype(np.float64) @ H.T.astype(np.float64)
    ks = [0, 1, 2, 5, 10]
    got, fitted = rlc.held_out_from_gram(G, 10, split=split, centered=centered, ks=ks)
    ref = reference_held_out(H, 10, split, centered, ks)
    assert list(got.index) == list(ref.index)
    np.testing.assert_allclose(got[ks].to_numpy(), ref[ks].to_numpy(), rtol=1e-10)
    # the fit rows' own in-sample curve comes with it
    fit, _ = rlc.split_rows(n, split)
    assert fitted.scores.shape == (len(fit), 10)


def test_held_out_of_the_stage_equals_the_second_solve_it_replaces(tmp_path):
    """The old path (components of the fit rows by a second solve, then two passes over the held-out rows)
    against the Gram-matrix path, on one store: relative 1e-10 where the old path is exact (float64)."""
    H = power_law_trajectory(slope=0.6)
    s = write_store(tmp_path / "run", H)
    ks = [0, 1, 3, 8, 20]
    new, _ = rlc.held_out(s, 20, split="half", ks=ks, method="gram")
    fit, test = rlc.split_rows(len(H), "half")
    old_spec = principal_components(s.rows("clipped")[fit].astype(np.float64), 20, method="gram")
    Ht = s.rows("clipped")[test].astype(np.float64)
    # the fit rows' components in float64: V = H_fitᵀ U Σ⁻¹ = H_fitᵀ (scores / λ)
    V = s.rows("clipped")[fit].astype(np.float64).T @ (old_spec.scores / old_spec.eigenvalues)
    old = rlc.residual_norms(Ht @ V, (Ht**2).sum(1), ks)
    np.testing.assert_allclose(new[ks].to_numpy(), old.to_numpy(), rtol=1e-10)


def test_the_default_analyse_reads_the_store_twice_in_all(tmp_path, monkeypatch):
    s = write_store(tmp_path / "run", power_law_trajectory())
    passes = []
    real = TrajectoryMatrix.blocks

    def counted(self, desc="pass", *args, **kwargs):
        passes.append(desc)
        yield from real(self, desc, *args, **kwargs)

    monkeypatch.setattr(TrajectoryMatrix, "blocks", counted)
    analyse(tmp_path / "run", AnalyseConfig(k=20), progress=False, device="cpu")
    assert passes == ["gram", "H^T U"]  # held-out, in-sample and per-step curves: no further read
    summary = json.loads((tmp_path / "run" / "analysis" / "clipped" / "summary.json").read_text())
    assert summary["passes"] == 2 and summary["io"]["bytes"] == 2 * s.n_steps * s.d * 4
    assert (tmp_path / "run" / "analysis" / "clipped" / "rlc_held_out.csv").is_file()


def test_components_are_never_held_whole(tmp_path):
    n, d, k = 40, 120_000, 30
    H = power_law_trajectory(n=n, d=d, slope=0.5)
    s = store_mod.write_matrix(tmp_path / "run", n, d, [(0, d, H)], shard_rows=16, tile_cols=4096)
    s = store_mod.open(s)
    components = d * k * 4  # 14.4 MB
    budget = components // 8
    tracemalloc.start()
    spec = principal_components(s, k, method="gram", max_memory=budget, components_out=tmp_path / "V.npy")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < components / 2, peak  # numpy's allocations are traced: no d x k array was ever made
    V = np.load(tmp_path / "V.npy", mmap_mode="r")
    exact = np.linalg.svd(H.astype(np.float64), full_matrices=False)[2][:k].T
    np.testing.assert_allclose(np.abs(np.sum(V * exact, axis=0)), 1, atol=1e-4)
    assert spec.passes == 2


def test_column_blocks_across_tile_boundaries_are_stored_where_they_belong(tmp_path):
    """write_matrix given column blocks that start and end inside tiles of 8 columns (two shards): the store
    reads back the same matrix, whole and by blocks that cross tiles."""
    n, d = 11, 40
    H = np.random.default_rng(4).standard_normal((n, d)).astype(np.float32)
    edges = [0, 5, 13, 14, 29, 40]
    blocks = [(a, b, H[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
    s = store_mod.open(store_mod.write_matrix(tmp_path / "s", n, d, blocks, shard_rows=6, tile_cols=8), verify=True)
    np.testing.assert_array_equal(s.rows("clipped"), H)
    np.testing.assert_array_equal(s.block("clipped", 2, 9, 3, 37), H[2:9, 3:37])


def test_a_tile_aligned_column_block_is_one_read_per_shard(tmp_path, monkeypatch):
    n, d, tile = 30, 5000, 256
    H = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    s = store_mod.open(store_mod.write_matrix(tmp_path / "run", n, d, [(0, d, H)], shard_rows=8, tile_cols=tile))
    calls = []
    real = os.preadv

    def spy(fd, buffers, offset):
        calls.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", spy)
    block = s.block("clipped", 0, n, 2 * tile, 6 * tile)
    assert np.array_equal(block, H[:, 2 * tile : 6 * tile])
    assert len(calls) == 4  # shards of 8, 8, 8 and 6 rows: one contiguous run each
    assert calls[0] == 8 * 4 * tile * 4
    calls.clear()
    assert np.array_equal(s.block("clipped", 3, 20, 100, 4900), H[3:20, 100:4900])  # unaligned: still exact
    M = TrajectoryMatrix(s, max_memory=2 * n * 1000 * 4 * 4)
    assert M.block_cols % tile == 0  # reads are widened to whole tiles


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_version_1_store_opens_and_retile_migrates_it(tmp_path, dtype):
    H = power_law_trajectory(n=20, d=700)
    v2 = store_mod.open(store_mod.write_matrix(tmp_path / "v2", 20, 700, [(0, 700, H)], dtype=dtype, shard_rows=6))
    root = tmp_path / "v1"  # what version 1 wrote: row-major (rows, d) shards, no tile_cols
    manifest = json.loads(json.dumps(v2.manifest))
    manifest["format_version"] = 1
    del manifest["tile_cols"]
    for sh in manifest["shards"]:
        rows = v2.block("clipped", sh["start"], sh["stop"], dtype=v2.dtype_numpy)
        (root / "streams" / "clipped").mkdir(parents=True, exist_ok=True)
        np.save(root / shard_path("clipped", sh["start"], sh["stop"]), rows)
    write_json(root / MANIFEST, manifest)
    old = store_mod.open(root, verify=True)
    assert np.array_equal(old.rows("clipped"), v2.rows("clipped"))
    before = principal_components(old, 5, method="gram").eigenvalues
    assert retile(root, tile_cols=128, progress=False) == 4
    new = store_mod.open(root, verify=True)  # checksums rewritten with the shards
    assert new.manifest["format_version"] == 2 and new.tile_cols == 128
    assert all(a.ndim == 1 for _, _, a in new.shards("clipped"))
    assert np.array_equal(new.rows("clipped"), v2.rows("clipped"))
    np.testing.assert_allclose(principal_components(new, 5, method="gram").eigenvalues, before, rtol=1e-12)
    assert retile(root, progress=False) == 0  # nothing left to do


def test_a_store_of_an_unknown_version_is_one_clear_error(tmp_path):
    root = store_mod.write_matrix(tmp_path / "s", 4, 10, [(0, 10, np.ones((4, 10), np.float32))])
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["format_version"] = 99
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpectralError, match="format version 99.*upgrade spectral"):
        store_mod.open(root)


def test_retile_cli_refuses_a_running_store(tmp_path, capsys):
    from spectral.store.__main__ import main

    root = store_mod.write_matrix(tmp_path / "s", 4, 10, [(0, 10, np.ones((4, 10), np.float32))])
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["status"] = "running"
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["retile", str(root)])
    assert exit_info.value.code == 2 and "marked running" in capsys.readouterr().err


def test_write_matrix_refuses_values_its_dtype_cannot_hold(tmp_path):
    big = np.full((3, 5), 1e5, np.float32)
    with pytest.raises(SpectralError, match="exceeds what float16 holds"):
        store_mod.write_matrix(tmp_path / "s", 3, 5, [(0, 5, big)], dtype="float16")
    assert not (tmp_path / "s").exists()  # nothing half-written left behind
    store_mod.write_matrix(tmp_path / "s", 3, 5, [(0, 5, big)], dtype="bfloat16")  # bfloat16 holds it


def test_plan_predicts_the_passes_and_bytes(tmp_path, capsys):
    from spectral.analyse.__main__ import main

    write_store(tmp_path / "run", power_law_trajectory())
    main([str(tmp_path / "run"), "--plan", "--k", "10"])
    out = capsys.readouterr().out
    assert "plan: gram on H of 60 x 3,000" in out and "passes over H: 2 (gram, components)" in out
    assert "independent of d" in out and "predicted:" in out
    assert not (tmp_path / "run" / "analysis").exists()  # a plan spends nothing


@pytest.mark.parametrize("method", ["gram", "seedcode", "randomized"])
@pytest.mark.parametrize("holdout", ["half", "none"])
def test_the_plan_counts_the_bytes_the_analysis_reads(tmp_path, monkeypatch, method, holdout):
    """The plan's passes times n d values are what the analysis then reads through the store's block
    reader (counted): the exact methods' held-out curve comes from the Gram matrix, a streamed method's
    solves again (the plan said 9 passes for randomized where 20 were read, before it counted held-out)."""
    from spectral.analyse.run import plan
    from spectral.store.reader import Store

    H = power_law_trajectory()
    write_store(tmp_path / "run", H)
    config = AnalyseConfig(k=5, method=method, holdout=holdout)
    predicted = plan(tmp_path / "run", config, cold=False)
    read, block = [], Store.block

    def counting(self, *a, **kw):
        values = block(self, *a, **kw)
        read.append(values.size)
        return values

    monkeypatch.setattr(Store, "block", counting)
    analyse(tmp_path / "run", config, progress=False, device="cpu")
    assert sum(read) == len(predicted.passes) * H.size
    assert predicted.bytes_read == sum(read) * 4 and predicted.seconds > 0  # every pass has a FLOP count


def test_the_plan_of_an_empty_store_says_what_analyse_says(tmp_path):
    from spectral.analyse.run import plan

    layout = [{"name": "w", "shape": [100], "offset": 0, "numel": 100}]
    store_mod.StoreWriter.create(tmp_path / "run", layout=layout, streams=["clipped"], dtype="float32", shard_rows=7,
                                 meta={}, tile_cols=32).close("complete")  # fmt: skip
    for attempt in (lambda: plan(tmp_path / "run", AnalyseConfig(k=5), cold=False),
                    lambda: analyse(tmp_path / "run", AnalyseConfig(k=5), progress=False, device="cpu")):  # fmt: skip
        with pytest.raises(SpectralError, match=r"the trajectory is empty \(n=0, d=100\)"):
            attempt()


def test_passes_of_defaults_to_the_analyse_defaults():
    """Four power iterations and the held-out curve, as ``analyse`` runs by default."""
    from spectral.analyse.plan import passes_of

    assert passes_of("randomized") == passes_of("randomized", 4, True)
    assert len(passes_of("randomized")) == 2 * (4 + 3 + 2) + 2
    for method in ("lanczos", "orthiter"):  # a typical count, each pass with a FLOP count
        assert set(passes_of(method)) == {"hht", "components"} and len(passes_of(method, holdout=False)) == 62


def test_the_plans_arithmetic_is_its_stated_formulas():
    """Rates chosen so every pass's time is a round number: a pass reads n d s bytes at the read rate and
    does its FLOPs at the GEMM rate (components in float32, twice as fast); it takes the longer of the two."""
    from dataclasses import replace

    from spectral.analyse.plan import Plan

    n, d, k = 100, 10_000, 10
    p = Plan(method="gram", n=n, d=d, k=k, itemsize=4, passes=["gram", "components"], read_rate=4e6, cold=True,
             flop_rate=1e8, block_cols=1000, compute_cols=500)  # fmt: skip
    assert p.pass_seconds("gram") == pytest.approx((1.0, 2.0))  # 4 MB at 4 MB/s; 2 n² d FLOPs at 1e8
    assert p.pass_seconds("components") == pytest.approx((1.0, 0.1))  # 2 n d k / 2
    assert p.pass_seconds("hht") == pytest.approx((1.0, 4 * n * d * (k + 10) / 1e8))
    assert p.seconds == pytest.approx(3.0)
    assert p.bytes_read == 2 * n * d * 4
    assert p.peak_bytes == 16 * n * n + 48 * n * k + 2 * n * 1000 * 4 + 2 * n * 500 * 8
    text = "\n".join(p.lines())
    big = replace(p, n=1024, d=2**20, read_rate=2**30, cold=False, flop_rate=5e9)  # H is 4 GiB, read twice
    assert big.lines()[:2] == [
        "plan: gram on H of 1,024 x 1,048,576 (4.0 GiB), k = 10",
        "  passes over H: 2 (gram, components); 8.0 GiB read",
    ]
    assert big.lines()[2].endswith("(reads of 1,000 columns, float64 sub-blocks of 500); independent of d")
    assert big.lines()[3] == "  probed: read (page cache as it stands) 1.00 GiB/s, float64 GEMM 5 GFLOP/s"
    for line in ("gram pass: read 1 s, arithmetic 2 s (compute-bound)", "components pass: read 1 s, arithmetic 0 s (read-bound)",
                 "predicted: 0.1 min", "passes over H: 2 (gram, components)", "cold read 0.00 GiB/s", "GEMM 0 GFLOP/s"):  # fmt: skip
        assert line in text
    assert f"peak memory: {p.peak_bytes / 2**30:.2f} GiB" in text and "groups" not in text
    grouped = replace(p, groups=3)
    assert grouped.peak_bytes == p.peak_bytes + 3 * 8 * n * n and "+ 8 n^2 x 3 groups" in "\n".join(grouped.lines())


def test_the_probes_divide_the_work_they_did_by_the_time_it_took(tmp_path, monkeypatch):
    """With a clock that advances 0.1 s per reading, the GEMM probe's rate is its products' FLOPs (2 r² c per
    B Bᵀ, r = min(n, 2000) rows, c >= 256 columns) over the clock's time, and the read probe's is the bytes
    it read (stopping at its budget) over the clock's time."""
    import spectral.analyse.plan as plan_mod
    from spectral.store import open as open_store

    ticks = iter(np.arange(100, 1000, 0.1))  # a clock that does not start at 0: only differences count
    monkeypatch.setattr(plan_mod.time, "perf_counter", lambda: next(ticks))
    # readings: t0 = 0; 0.1 … 0.4 each pass the loop's test (4 products after the warm-up); 0.5 ends it; 0.6
    assert plan_mod.probe_flops(3000, 100, seconds=0.45) == pytest.approx(4 * 2 * 2000**2 * 256 / 0.6)
    assert plan_mod.probe_flops(3000, 100, seconds=0) == pytest.approx(2 * 2000**2 * 256 / 0.3)  # at least one
    ticks = iter(np.arange(100, 1000, 0.1))
    H = power_law_trajectory()
    write_store(tmp_path / "run", H)
    store = open_store(tmp_path / "run")
    budget = 3 * H.shape[0] * 400 * 4  # three blocks of 400 columns
    reads, block = [], store.block
    monkeypatch.setattr(store, "block", lambda *a, **kw: reads.append(a) or block(*a, **kw))
    rate = plan_mod.probe_read(store, "clipped", 400, cold=False, budget_bytes=budget)
    assert rate == pytest.approx(budget / 0.3)  # t0, a reading after each block short of the budget (2), the end
    assert reads == [("clipped", 0, H.shape[0], a, a + 400) for a in (0, 400, 800)]  # whole, consecutive blocks
    reads.clear()  # wide blocks are narrowed to the budget: 1,000 float32 columns of 60 rows
    plan_mod.probe_read(store, "clipped", 10_000, cold=False, budget_bytes=H.shape[0] * 1000 * 4)
    assert reads == [("clipped", 0, H.shape[0], 0, 1000)]
    ticks, reads[:] = iter(np.arange(100, 1000, 1.0)), []  # a slow disk: stops after the reading past 3 s
    plan_mod.probe_read(store, "clipped", 400, cold=False, budget_bytes=2**40)
    assert len(reads) == 4


def test_cached_rdp_epsilon_equals_opacus_and_prv_waits_for_commits():
    from spectral.dp.privacy import PrivacyLedger, PrivacyPlan, compose_epsilon

    kw = dict(sampling="poisson", n_train=10_000, batch_size=100, steps=300, noise_multiplier=0.8, max_grad_norm=1.0)
    plan = PrivacyPlan(accountant="rdp", delta=1e-5, target_epsilon=None, **kw)
    ledger = PrivacyLedger(plan)
    for step in range(300):
        ledger.record_step(step)
        if step in (0, 17, 299):
            exact = compose_epsilon(ledger.history(), plan.delta, "rdp")
            assert ledger.epsilon(exact=False) == pytest.approx(exact, rel=1e-12)
    prior = [[1.1, 0.01, 6]]  # a run this one continues: in every epsilon, never in the saved state
    continued = PrivacyLedger(PrivacyPlan(accountant="rdp", delta=1e-5, target_epsilon=None, prior=prior, **kw))
    for step in range(3):
        continued.record_step(step)
    assert continued.state() == [[0.8, 0.01, 3]] and continued.history() == [(1.1, 0.01, 6), (0.8, 0.01, 3)]
    resumed = PrivacyLedger(continued.plan, continued.state())  # what a resumed run rebuilds from its checkpoint
    assert resumed.epsilon() == continued.epsilon() == pytest.approx(compose_epsilon(continued.history(), 1e-5))
    assert PrivacyLedger(plan).epsilon() == 0.0  # before any step
    for accountant in ("rdp", "prv"):  # a step without noise is no privacy, cheap or exact
        noiseless = PrivacyLedger(
            PrivacyPlan(accountant=accountant, delta=1e-5, target_epsilon=None, **{**kw, "noise_multiplier": 0.0})
        )
        noiseless.record_step(0)
        assert math.isinf(noiseless.epsilon(exact=False)) and math.isinf(noiseless.epsilon())
    prv = PrivacyLedger(PrivacyPlan(accountant="prv", delta=1e-5, target_epsilon=None, **kw))
    prv.record_step(0)
    assert math.isnan(prv.epsilon(exact=False))
    assert prv.epsilon() == pytest.approx(compose_epsilon(prv.history(), 1e-5, "prv"))


def test_the_plan_at_the_start_of_a_run_leaves_the_page_cache_alone(tmp_path, monkeypatch, capsys):
    """--plan probes the disk cold; the lines every run prints first do not drop the cache it is about to read."""
    from spectral.analyse.run import plan
    from spectral.store.reader import Store

    write_store(tmp_path / "run", power_law_trajectory())
    dropped = []
    monkeypatch.setattr(Store, "drop_cache", lambda self, stream=None: dropped.append(stream))
    analyse(tmp_path / "run", AnalyseConfig(k=5), progress=True, device="cpu")
    assert dropped == [] and "read (page cache as it stands)" in capsys.readouterr().err
    assert "cold read" in "\n".join(plan(tmp_path / "run", AnalyseConfig(k=5)).lines()) and dropped == ["clipped"]


# ---------------------------------------------------------------------- rlc against brute force
def test_summarize_equals_a_loop_over_steps():
    G = pd.DataFrame(np.random.default_rng(3).random((23, 4)) ** 2, columns=pd.Index([0, 1, 5, 9], name="k"))
    got = rlc.summarize(G).set_index("k")
    for k in G.columns:
        col = G[k].to_numpy()
        assert got.loc[k, "mean"] == pytest.approx(sum(col) / len(col), rel=1e-12)
        assert got.loc[k, "rms"] == pytest.approx(math.sqrt(sum(v * v for v in col) / len(col)), rel=1e-12)
        assert got.loc[k, "max"] == max(col)
        for q in (10, 50, 90):
            assert got.loc[k, f"q{q}"] == pytest.approx(np.quantile(col, q / 100), rel=1e-12)
    assert list(got.index) == [0, 1, 5, 9]


def test_held_out_from_gram_defaults_index_and_rank_cap():
    H = power_law_trajectory(n=30, d=300, slope=0.5)
    G = H.astype(np.float64) @ H.T.astype(np.float64)
    default, _ = rlc.held_out_from_gram(G, 5)
    half, _ = rlc.held_out_from_gram(G, 5, split="half", centered=False)
    pd.testing.assert_frame_equal(default, half)
    fit, test = rlc.split_rows(30, "half")
    assert default.index.name == "step" and list(default.index) == list(test)
    np.testing.assert_allclose(
        default.to_numpy(), reference_held_out(H, 5, "half", False, default.columns).to_numpy(), rtol=1e-10
    )
    _, centered = rlc.held_out_from_gram(G, 40, centered=True)  # k past the fit rows: centring leaves len(fit) - 1
    assert len(centered.eigenvalues) == len(fit) - 1


@pytest.mark.parametrize("method", ["auto", "gram", "randomized", "lanczos"])
def test_held_out_by_every_method_equals_a_dense_refit(tmp_path, method):
    H = power_law_trajectory(n=36, d=400, slope=0.7)
    s = write_store(tmp_path / "run", H)
    ks = [0, 1, 4, 8]
    kwargs = {} if method == "auto" else {"method": method}
    got, spectrum = rlc.held_out(s, 8, ks=ks, **kwargs)  # default split: half
    ref = reference_held_out(s.rows("clipped"), 8, "half", False, ks)
    assert got.index.name == "step" and list(got.index) == list(ref.index)
    np.testing.assert_allclose(got[ks].to_numpy(), ref[ks].to_numpy(), rtol=2e-4)
    assert spectrum.method == ("gram" if method == "auto" else method)  # small n: auto takes the exact Gram path
    grid, _ = rlc.held_out(s, 8, **kwargs)  # no ks: the k grid up to the fitted rank
    assert list(grid.columns) == list(rlc.k_grid(8))


@pytest.mark.parametrize("method", ["auto", "randomized"])
def test_held_out_of_an_array_reads_n_and_d_from_its_shape(method):
    """An in-memory (n, d) array is a source like a store: its rows are the steps, its columns the
    parameters (n ≠ d here, so swapping them fails)."""
    H = power_law_trajectory(n=24, d=90, slope=0.6).astype(np.float64)
    kwargs = {} if method == "auto" else {"method": method}
    got, spectrum = rlc.held_out(H, 6, ks=[0, 2, 6], **kwargs)
    ref = reference_held_out(H, 6, "half", False, [0, 2, 6])
    assert list(got.index) == list(range(12, 24)) and spectrum.method == ("gram" if method == "auto" else method)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=2e-4)


def test_k_grid_split_error_and_in_sample_limit():
    grid = rlc.k_grid(10**6)
    assert grid.dtype.kind == "i" and len(grid) == 31 and grid[0] == 0 and grid[1] == 1 and grid[-1] == 10**6
    assert len(rlc.k_grid(10**6, points=12)) == 13
    assert rlc.in_sample_readable(41) == 20 and isinstance(rlc.in_sample_readable(41), int)
    with pytest.raises(SpectralError, match="unknown split 'thirds'; choose half or alternate"):
        rlc.split_rows(10, "thirds")


def test_held_out_from_gram_rank_ks_and_the_fitted_spectrum():
    H = power_law_trajectory(n=20, d=300, slope=0.5)
    G = H.astype(np.float64) @ H.T.astype(np.float64)
    fit, _ = rlc.split_rows(20, "half")
    got, fitted = rlc.held_out_from_gram(G, 50, ks=[0, 3, 7])  # k past the fit rows: their rank, all of it
    assert list(got.columns) == [0, 3, 7] and len(fitted.eigenvalues) == len(fit)
    G_fit = G[np.ix_(fit, fit)]
    assert fitted.total_energy == pytest.approx(np.trace(G_fit), rel=1e-12)
    assert (fitted.method, fitted.centered, fitted.passes, fitted.seconds) == ("gram", False, 0, 0.0)
    np.testing.assert_array_equal(fitted.residuals, np.zeros(len(fit)))
    np.testing.assert_allclose(fitted.row_sq_norms, np.diag(G_fit), rtol=1e-12)


def _two_stream_store(root, H, P):
    layout = [{"name": "w", "shape": [H.shape[1]], "offset": 0, "numel": H.shape[1]}]
    w = store_mod.StoreWriter.create(
        root, layout=layout, streams=["clipped", "private"], dtype="float32", shard_rows=7, meta={}, tile_cols=128
    )
    for t in range(len(H)):
        w.append(t, {"clipped": H[t], "private": P[t]}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return store_mod.open(root)


real_pca = rlc.principal_components


@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_held_out_passes_its_options_on(tmp_path, monkeypatch, method):
    """stream, centered and ks change the result as the dense reference says; max_memory and device reach
    the passes over the data (spied), and auto asks choose_method with the source's n, d and k."""
    H = power_law_trajectory(n=30, d=300, slope=0.6)
    P = H + np.random.default_rng(7).standard_normal(H.shape).astype(np.float32) * 0.05
    s = _two_stream_store(tmp_path / "run", H, P)
    ks = [0, 2, 6]
    got, _ = rlc.held_out(s, 6, stream="private", split="alternate", centered=True, ks=ks, method=method)
    ref = reference_held_out(s.rows("private"), 6, "alternate", True, ks)
    assert list(got.columns) == ks
    np.testing.assert_allclose(got[ks].to_numpy(), ref[ks].to_numpy(), rtol=5e-4)
    seen, real = [], rlc.trajectory_matrix

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **{**kw, "client": None})  # the client is only recorded: no cluster in this test

    monkeypatch.setattr(rlc, "trajectory_matrix", spy)
    monkeypatch.setattr(rlc, "principal_components", lambda *a, client=None, **kw: real_pca(*a, **kw))
    rlc.held_out(s, 6, method=method, max_memory=10**6, device="cpu", client="a client")
    assert seen and all(kw["max_memory"] == 10**6 and str(kw["device"]) == "cpu" for kw in seen)
    assert all(kw["client"] == "a client" for kw in seen)
    asked = []
    monkeypatch.setattr(rlc, "choose_method", lambda *a: asked.append(a) or ("gram", "spied"))
    rlc.held_out(s, 6, max_memory=10**6)
    assert asked == [(30, 300, 6, 10**6)]


def test_residual_norms_against_a_loop_with_and_without_energies():
    rng = np.random.default_rng(8)
    scores, sq = rng.standard_normal((5, 4)), rng.random(5) * 10 + 20
    ks = [0, 1, 3, 4]
    got = rlc.residual_norms(scores, sq, ks)
    assert got.index.name == "step" and got.columns.name == "k" and list(got.columns) == ks
    for t in range(5):
        for k in ks:
            assert got.loc[t, k] == pytest.approx(
                math.sqrt(sq[t] - sum(scores[t, j] ** 2 for j in range(k))), rel=1e-12
            )
    energies = rng.random((5, 4))  # a predicted trajectory's own energies replace scores²
    given = rlc.residual_norms(scores, sq, ks, energies=energies)
    for t in range(5):
        assert given.loc[t, 3] == pytest.approx(math.sqrt(sq[t] - energies[t, :3].sum()), rel=1e-12)
    with pytest.raises(SpectralError, match=r"k values must lie in \[0, 4\]"):
        rlc.residual_norms(scores, sq, [0, 5])
