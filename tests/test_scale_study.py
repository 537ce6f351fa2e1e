"""The scale study derives every part's spectrum and G_k curves from one Gram matrix: check them
against the analyse stage run directly on that part's rows (an independent path through the data)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from helpers import power_law_trajectory, write_store

from spectral.analyse import principal_components, rlc
from spectral.analyse.matrix import TrajectoryMatrix

sys.path.insert(0, str(REPO / "experiments"))
import scale_study  # noqa: E402


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    H = power_law_trajectory(n=40, d=900, slope=0.8, seed=2)
    s = write_store(tmp_path_factory.mktemp("scale") / "run", H)
    return s, TrajectoryMatrix(s).gram()


def test_a_parts_spectrum_and_curves_equal_the_analyse_stage_on_its_rows(trajectory):
    store, G = trajectory
    rows = np.arange(10, 40)
    lam, inside = scale_study.in_sample_curve(G, rows, 12)
    spec = principal_components(store, 12, rows=rows, method="gram")
    np.testing.assert_allclose(lam, spec.eigenvalues, rtol=1e-9)
    direct = rlc.summarize(rlc.in_sample(spec))
    pd.testing.assert_frame_equal(inside.reset_index(drop=True), direct.reset_index(drop=True), rtol=1e-6)
    held = scale_study.held_out_curve(G, rows, 8)
    G_out, _ = rlc.held_out(store.rows("clipped")[rows].astype(np.float64), 8, split="half", method="gram")
    pd.testing.assert_frame_equal(held.reset_index(drop=True), rlc.summarize(G_out).reset_index(drop=True), rtol=1e-6)


def test_parts_are_named_and_bad_ones_refused():
    from spectral.errors import SpectralError

    parts = scale_study.parts_of(1000, ["first:250", "all", "drop:300"])
    assert {k: (v[0], len(v)) for k, v in parts.items()} == {
        "first 250": (0, 250),
        "all": (0, 1000),
        "steps 300…999": (300, 700),
    }
    with pytest.raises(SpectralError, match="unknown part"):
        scale_study.parts_of(10, ["last:3"])


def test_the_whole_runs_in_sample_c_agrees_with_the_report(tmp_path):
    """The study's in-sample exponent for "all" is read to k = n/2, as the report reads the analyse stage's
    curve (a fit through the collapse at k = n gave 0.680 against the report's 0.134)."""
    from spectral.analyse import AnalyseConfig, analyse
    from spectral.report import ReportConfig, report

    H = power_law_trajectory(n=40, d=900, slope=0.8, seed=5)
    write_store(tmp_path / "run", H)
    analyse(tmp_path / "run", AnalyseConfig(k=40), progress=False, device="cpu")
    fitted = report(tmp_path / "run", ReportConfig(fit_range=(1, 40)), out=tmp_path / "fig")["fits"]["rlc"]
    scale_study.main([str(tmp_path / "run"), "--parts", "all", "--k", "40", "--fit-range", "1", "40"])
    row = pd.read_csv(tmp_path / "run" / "studies" / "scale" / "scale_study.csv").iloc[0]
    assert row.c_in_sample == pytest.approx(fitted["in-sample"]["c"], rel=1e-6)
    curves = pd.read_csv(tmp_path / "run" / "studies" / "scale" / "scale_study_curves.csv")
    assert curves[curves.curve == "in-sample"].k.max() <= 20  # nothing past n/2 drawn: no 1e-10 collapse


def test_the_committed_scale_table_reads_the_in_sample_curve_to_n_half_as_the_report():
    """figures/cpu/scale_study.csv: each part's in-sample c is the fit of its committed curve up to n/2
    (past it the curve collapses at k = n), and the whole run's equals the report's (fits.json)."""
    import json

    from spectral.report import fits

    out = REPO / "figures" / "cpu"
    table = pd.read_csv(out / "scale_study.csv")
    curves = pd.read_csv(out / "scale_study_curves.csv")
    for _, row in table.iterrows():
        inside = curves[(curves.part == row.part) & (curves.curve == "in-sample")]
        assert inside.k.max() <= rlc.in_sample_readable(row.n)
        assert row.c_in_sample == pytest.approx(fits.rlc_fit(inside)["c"], rel=1e-9)
    report = json.loads((out / "fits.json").read_text())["rlc"]["in-sample"]["c"]
    assert table.set_index("part").c_in_sample["all"] == pytest.approx(report, rel=1e-6)
