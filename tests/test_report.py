"""Report stage: fits recover known exponents; figures are redrawn from saved data only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli, run_main
from helpers import power_law_trajectory, write_store

from spectral import theory
from spectral.analyse import principal_components, rlc
from spectral.report import fits


@pytest.mark.parametrize("a", [0.6, 1.0, 1.5])
def test_slope_recovery_on_a_noisy_power_law(a):
    rng = np.random.default_rng(1)
    k = np.arange(1, 501)
    s = 3.0 * k**-a * np.exp(0.05 * rng.standard_normal(500))
    f = fits.spectrum_fit(s, (1, 500))
    assert f["slope"] == pytest.approx(-a, abs=0.02)  # stated tolerance: 0.02
    assert f["ci_low"] <= -a <= f["ci_high"] and f["boot_low"] <= -a <= f["boot_high"]
    assert f["r2"] > 0.98 and f["c_implied"] == pytest.approx(a - 0.5, abs=0.02)
    table = fits.range_table(s)
    assert len(table) == len(fits.DEFAULT_RANGES) and np.allclose(table.slope, -a, atol=0.06)


def test_fit_matches_the_closed_form_least_squares_line():
    """Slope, intercept, R² and the slope's standard error by their textbook formulas (not by the
    library the fit calls), on noisy data so every quantity is exercised."""
    rng = np.random.default_rng(7)
    k = np.arange(1, 101)
    s = 2.0 * k**-0.8 * np.exp(0.1 * rng.standard_normal(100))
    x, y = np.log(k), np.log(s)
    sxx, sxy = ((x - x.mean()) ** 2).sum(), ((x - x.mean()) * (y - y.mean())).sum()
    slope = sxy / sxx
    intercept = y.mean() - slope * x.mean()
    resid = y - intercept - slope * x
    r2 = 1 - (resid**2).sum() / ((y - y.mean()) ** 2).sum()
    se = np.sqrt((resid**2).sum() / (len(x) - 2) / sxx)
    f = fits.spectrum_fit(s, (1, 100))
    assert f["slope"] == pytest.approx(slope, rel=1e-12) and f["intercept"] == pytest.approx(intercept, rel=1e-12)
    assert f["r2"] == pytest.approx(r2, rel=1e-12)
    from scipy.stats import t

    half = t.ppf(0.975, len(x) - 2) * se  # the 95% interval of the slope
    assert f["ci_low"] == pytest.approx(slope - half, rel=1e-9) and f["ci_high"] == pytest.approx(
        slope + half, rel=1e-9
    )
    assert fits.spectrum_fit(k**-1.3, (1, 100))["verdict"] == "dimension-free"


def test_rlc_exponent_tracks_the_spectrum_slope_on_a_store(tmp_path):
    """σ_j ∝ j^{-a} ⇒ G_k ∝ k^{1/2−a}: c from the measured G_k equals a − 1/2 from the spectrum."""
    a = 1.0
    H = power_law_trajectory(n=400, d=2000, slope=a, seed=3)
    spec = principal_components(write_store(tmp_path / "s", H), 60)
    curve = rlc.summarize(rlc.in_sample(spec))
    c = fits.rlc_fit(curve, k_range=(1, 40))
    s = fits.spectrum_fit(spec.singular_values, (1, 60))
    assert s["slope"] == pytest.approx(-a, abs=0.01)
    assert c["c"] == pytest.approx(a - 0.5, abs=0.08)  # finite n makes the tail sum slightly steeper
    assert c["g0"] == pytest.approx(np.sqrt((np.linalg.norm(H.astype(float), axis=1) ** 2).mean()), rel=1e-5)
    assert c["verdict_interval"] in ("logarithmic", "undecided (logarithmic to dimension-free)")
    frame = fits.dimension_curve(curve, ds=[10, 64, 1000])  # d needs G_k up to k = 2^{⌈log₂ d⌉−1}
    assert frame.measured.tolist() == [True, True, False]


def test_verdicts_for_synthetic_curves():
    k = np.r_[0, np.unique(np.round(np.logspace(0, 2, 20)).astype(int))]
    for c, verdict in ((0.3, "polynomial"), (0.5, "logarithmic"), (0.8, "dimension-free")):
        curve = pd.DataFrame({"k": k, "rms": np.maximum(k, 1.0) ** -c})
        f = fits.rlc_fit(curve)
        assert f["c"] == pytest.approx(c) and f["verdict"] == verdict


def make_reported_run(tmp_path):
    """A tiny analysed run with toy and retraining results, as the stages would leave it."""
    H = power_law_trajectory(n=80, d=1500, slope=0.9, seed=5)
    run = tmp_path / "run"
    write_store(run, H)
    proc = run_cli("spectral.analyse", run, "--k", "40", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "spectral.toy", run, "--scale", "quick", "--dims", "20", "200", "--modes", "const", "linear", "--no-figure"
    )
    assert proc.returncode == 0, proc.stderr
    rows = [
        {"variant": v, "seed": s, "step": t, "accuracy": 0.5 + 0.001 * t * (r / 100) + 0.01 * s}
        for v, r in (("rank 10", 10), ("rank 100", 100), ("full", 200))
        for s in range(3)
        for t in range(0, 101, 25)
    ]
    (run / "retrain").mkdir()
    pd.DataFrame(rows).to_csv(run / "retrain" / "retrain_history.csv", index=False)
    return run


def test_report_redraws_every_figure_from_saved_data(cli, tmp_path):
    import shutil

    run = make_reported_run(tmp_path)
    shutil.rmtree(run / "streams")  # the gradients themselves are gone: only saved results remain
    (run / "analysis" / "clipped" / "components.npy").unlink()
    proc = cli("spectral.report", run, "--fit-range", "1", "40")
    assert proc.returncode == 0, proc.stderr
    figs = run / "figures"
    for name in ("fig1_spectrum", "fig2_density", "fig3_rlc", "fig4_dimension", "fig5_retrain", "fig6_toy"):
        assert (figs / f"{name}.png").stat().st_size > 10_000, name
        assert (figs / f"{name}.pdf").is_file() and (figs / f"{name}.csv").is_file(), name
    saved = json.loads((figs / "fits.json").read_text())
    assert saved["spectrum"]["slope"] == pytest.approx(-0.9, abs=0.02)
    assert {"in-sample", "held-out"} <= set(saved["rlc"])
    assert "slope -0.90" in proc.stdout or "slope -0.89" in proc.stdout or "slope -0.91" in proc.stdout
    # the data beside a figure is what was plotted
    plotted = pd.read_csv(figs / "fig1_spectrum.csv")
    spectrum = pd.read_csv(run / "analysis" / "clipped" / "spectrum.csv")
    np.testing.assert_allclose(plotted.singular_value, spectrum.singular_value)


def test_report_bad_input_exit_2(cli, tmp_path):
    proc = cli("spectral.report", tmp_path / "missing")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = cli("spectral.report", tmp_path / "empty")
    assert proc.returncode == 2 and "nothing to report" in proc.stderr


def test_notebook_executes_on_a_tiny_run(cli, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    run = make_reported_run(tmp_path)
    monkeypatch.setenv("SPECTRAL_RUN", str(run))
    nb = nbformat.read(REPO / "experiments" / "explore_run.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "experiments")}}
    ).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "slope -0.9" in outputs and "c = " in outputs
    # every cell that draws shows its figure inline (no library call may switch the backend to Agg), and
    # draws with sp.plot: no hand-drawn figures left in the notebook
    plot_cells = [c for c in nb.cells if c.cell_type == "code" and "subplots" in c.source]
    assert len(plot_cells) == 3 and all("sp.plot." in c.source for c in plot_cells)
    assert not any(".loglog(" in c.source or ".plot(" in c.source for c in nb.cells if c.cell_type == "code")
    for cell in plot_cells:
        kinds = {k for o in cell.get("outputs", []) for k in o.get("data", {})}
        assert "image/png" in kinds, cell.source


@pytest.mark.parametrize("a", [0.3, 0.5, 0.8, 1.2])
def test_implied_exponent_only_where_the_power_law_link_holds(a):
    """c = a − 1/2 needs a > 1/2; below that the link does not apply (never a growth worse than √d)."""
    k = np.arange(1, 401)
    f = fits.spectrum_fit(k**-a, (1, 400))
    assert f["slope"] == pytest.approx(-a, abs=1e-9)
    if a > 0.5:
        assert f["c_implied"] == pytest.approx(a - 0.5, abs=1e-9) and "not applicable" not in f["verdict"]
    else:
        assert f["c_implied"] is None and f["verdict"].startswith("not applicable")
        assert f["verdict_interval"].startswith("not applicable")


def test_a_negative_or_zero_exponent_means_the_classical_sqrt_d():
    for c in (-0.3, 0.0):
        reg = theory.regime(c)
        assert reg.name == "polynomial" and reg.growth == "O(d^0.50)"


def test_g_k_verdict_comes_from_the_worst_case_over_steps():
    """rms decays fast, the max slowly: the verdict follows the max, as the bound asks of every gradient."""
    k = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    kk = np.maximum(k, 1).astype(float)
    curve = pd.DataFrame({"k": k, "rms": kk**-0.9, "q90": kk**-0.6, "max": kk**-0.2})
    stats = fits.rlc_statistics(curve)
    for stat, c in (("rms", 0.9), ("q90", 0.6), ("max", 0.2)):
        slope = np.polyfit(np.log(kk[1:]), np.log(curve[stat].to_numpy()[1:]), 1)[0]  # closed-form OLS
        assert stats[stat]["c"] == pytest.approx(-slope, abs=1e-9) == pytest.approx(c, abs=1e-9)
    assert stats["verdict_basis"] == "max" and stats["verdict"] == "polynomial"
    assert stats["rms"]["verdict"] == "dimension-free"


def test_report_draws_what_is_there_and_names_what_is_missing(cli, tmp_path):
    import shutil

    run = make_reported_run(tmp_path)
    shutil.rmtree(run / "retrain")
    shutil.rmtree(run / "toy")
    (run / "analysis" / "clipped" / "rlc_held_out.csv").unlink()
    proc = run_main("spectral.report", run, "--fit-range", "1", "10000")  # beyond the 40 ranks analysed
    assert proc.returncode == 0, proc.stderr
    figs = run / "figures"
    assert (figs / "fig1_spectrum.png").is_file() and (figs / "fig3_rlc.png").is_file()
    assert not (figs / "fig5_retrain.png").exists() and not (figs / "fig6_toy.png").exists()
    assert "subspace retraining" in proc.stdout and "geometric-median toy" in proc.stdout
    saved = json.loads((figs / "fits.json").read_text())
    assert saved["spectrum"]["range"] == [1, 40]  # clipped to the ranks there are, and saying so
    assert set(saved["rlc"]) == {"in-sample"}
    proc = run_main("spectral.report", run, "--fit-range", "100", "200")
    assert proc.returncode == 2 and "does not fit 40 singular values" in proc.stderr


def test_repro_runs_every_stage_at_a_tiny_scale_and_a_rerun_continues(cli, tmp_path, tiny_model, tiny_data):
    args = ["--scale", "tiny", tmp_path / "run", "--model", tiny_model, "--data", tiny_data, "--no-progress"]
    proc = cli("spectral.repro", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figs = tmp_path / "run" / "figures"
    for name in ("fig1_spectrum", "fig2_density", "fig3_rlc", "fig4_dimension", "fig5_retrain", "fig6_toy"):
        assert (figs / f"{name}.png").is_file(), name
    written = sorted((tmp_path / "run").rglob("*.json"))
    assert len(written) > 10
    for path in written:  # strict JSON everywhere: NaN and Infinity are not JSON (jq, browsers refuse them)
        json.loads(path.read_text(), parse_constant=lambda c, p=path: pytest.fail(f"{p} holds {c}"))
    stamp = (tmp_path / "run" / "manifest.json").stat().st_mtime_ns
    again = cli("spectral.repro", *args)  # everything is there: each stage returns what it has
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout
    assert (tmp_path / "run" / "manifest.json").stat().st_mtime_ns == stamp


def test_fig5_draws_every_variant_in_its_own_colour_and_line_style(tmp_path, monkeypatch):
    """Two other runs' subspaces of the same rank used to share one colour and one dotted line; the controls
    of one rank (components 101-200, span-random, complement) each get their own colour too."""
    from spectral.report import figures

    variants = [  # (variant, rank, subspace_from, setting)
        ("full", 0, "trajectory", "signal-trajectory"),
        ("rank 0 (noise only)", 0, "trajectory", "signal-trajectory"),
        ("rank 100", 100, "trajectory", "signal-trajectory"),
        ("rank 10", 10, "trajectory", "signal-trajectory-r10"),
        ("random 100", 100, "random", "signal-random"),
        ("rank 100 of run_a", 100, "run_a", "signal-run_a"),
        ("rank 100 of run_b", 100, "run_b", "signal-run_b"),
        ("components 101-200", 100, "trajectory", "signal-trajectory-c101-200"),
        ("span-random 100", 100, "span-random", "signal-span-random"),
        ("complement of top 100", 100, "complement", "signal-complement"),
    ]
    history = pd.DataFrame(
        [
            {"variant": v, "rank": r, "subspace_from": src, "setting": st, "seed": 0, "step": step, "accuracy": 0.7}
            for v, r, src, st in variants
            for step in (0, 50)
        ]
    )
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, stem, *a, **k: drawn.setdefault("fig", fig) and [])
    figures.retrain_figure(history, tmp_path / "fig5")
    mean_lines = [ln for ax in drawn["fig"].axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert len(mean_lines) == len(variants)
    # the dash pattern (offset, on-off sequence) tells custom patterns apart, which get_linestyle() does not
    looks = {(ln.get_color(), str(ln._dash_pattern)) for ln in mean_lines}
    assert len(looks) == len(variants)
    assert len({ln.get_color() for ln in mean_lines}) == len(variants)  # colour alone tells them apart
