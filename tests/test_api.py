"""The Python API: ``import spectral as sp`` stays light, stage functions take keyword settings validated
as the CLI validates them, ``sp.open`` reads a run back as data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import run_main
from helpers import power_law_trajectory, write_store

import spectral as sp
from spectral.errors import SpectralError


def test_import_spectral_does_not_import_torch_or_pandas():
    code = "import sys, spectral as sp; sp.open; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_stages_stay_callable_after_their_submodules_are_imported():
    import spectral.analyse.rlc  # sets spectral.analyse to the package: it must still be the stage function
    import spectral.collect.run  # noqa: F401

    assert callable(sp.analyse) and callable(sp.collect) and callable(sp.compare)
    assert sp.analyse.rlc is spectral.analyse.rlc  # and still the package


@pytest.fixture
def run(tmp_path):
    write_store(tmp_path / "run", power_law_trajectory(n=40, d=600, slope=0.8))
    return tmp_path / "run"


def test_keyword_settings_equal_a_config_object(run, tmp_path):
    spec = sp.analyse(run, k=12, holdout="alternate", progress=False, device="cpu")
    again = sp.analyse(run, sp.AnalyseConfig(k=12, holdout="alternate"), out=tmp_path / "again", progress=False,
                       device="cpu")  # fmt: skip
    np.testing.assert_allclose(spec.eigenvalues, again.eigenvalues)
    r = sp.open(run)
    assert len(r.spectrum()) == 12 and r.spectrum().eigenvalue.iloc[0] == pytest.approx(spec.eigenvalues[0])
    assert r.rlc().k.max() <= 20 and "rms" in r.rlc("clipped", "in-sample")
    fitted = r.fits(fit_range=(1, 12))
    assert fitted["spectrum"]["slope"] == pytest.approx(-0.8, abs=0.05)
    assert len(r.steps) == 40 and r.store.n_steps == 40


def test_bad_settings_are_the_clis_error(run, capsys):
    with pytest.raises(SpectralError) as api:
        sp.analyse(run, k=0, progress=False)
    cli = run_main("spectral.analyse", run, "--k", "0", "--no-progress")
    assert cli.returncode == 2 and str(api.value) in cli.stderr
    with pytest.raises(SpectralError, match="unknown setting.*kk"):
        sp.analyse(run, kk=3)
    with pytest.raises(SpectralError, match="not both"):
        sp.analyse(run, sp.AnalyseConfig(), k=3)


def test_open_says_what_to_run_first(run, tmp_path):
    with pytest.raises(SpectralError, match="run sp.analyse"):
        sp.open(run).spectrum()
    with pytest.raises(SpectralError, match="no such run directory"):
        sp.open(tmp_path / "nowhere")


def test_plot_functions_draw_the_data_on_the_callers_axes_and_save_nothing(run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    sp.analyse(run, k=12, progress=False, device="cpu")
    r = sp.open(run)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    fig = Figure()
    ax, (a1, a2) = fig.add_subplot(2, 2, 1), (fig.add_subplot(2, 2, 3), fig.add_subplot(2, 2, 4))
    fits = r.fits(fit_range=(1, 12))
    assert sp.plot.spectrum(r.spectrum(), fits["spectrum"], ax=ax) is fig
    marked = [ln for ln in ax.lines if ln.get_marker() == "o"][0]  # the measured σ_k, as given
    np.testing.assert_allclose(marked.get_ydata(), r.spectrum().singular_value)
    held = r.rlc()
    assert sp.plot.rlc(held, ax=a1) is fig
    np.testing.assert_allclose(a1.lines[0].get_ydata(), held[held.k >= 1]["rms"])
    with pytest.raises(ValueError, match="2 panel"):
        sp.plot.groups(r.spectrum(), r.spectrum(), axes=[a2])
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    alone = sp.plot.spectrum(r.spectrum())  # without axes: a figure of its own
    assert isinstance(alone, Figure) and alone is not fig


def test_the_report_draws_its_figures_with_sp_plot(run, tmp_path, monkeypatch):
    from spectral.report import plot

    sp.analyse(run, k=12, progress=False, device="cpu")
    drawn = []
    for name in ("spectrum", "rlc", "dimension", "density"):
        original = getattr(plot, name)
        monkeypatch.setattr(plot, name, lambda *a, _f=original, _n=name, **k: drawn.append(_n) or _f(*a, **k))
    sp.report(run, fit_range=(1, 12), out=tmp_path / "figs")
    assert sorted(drawn) == ["density", "dimension", "rlc", "spectrum"]
    assert (tmp_path / "figs" / "fig1_spectrum.png").is_file()


def test_the_own_model_notebook_runs_a_bert_and_a_gpt2_from_configs(spawning, tmp_path, monkeypatch):
    """experiments/own_model.ipynb as a user runs it: both models collect, analyse and draw."""
    nbformat = pytest.importorskip("nbformat")
    from conftest import REPO
    from nbclient import NotebookClient

    monkeypatch.setenv("SPECTRAL_WORK", str(tmp_path))
    nb = nbformat.read(REPO / "experiments" / "own_model.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "pass --params all" in text  # GPT-2's fused q/k/v: the clear refusal of attention-qv
    for name in ("bert", "gpt2"):
        r = sp.open(tmp_path / f"{name}-run")
        assert len(r.steps) == 30 and len(r.spectrum()) == 20 and f"{name}: slope" in text
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
