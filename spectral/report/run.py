"""Redraw every figure of a run from its saved data: fits, figures, and the data beside them.

Reads (whatever is there; a missing part is reported, not fatal unless nothing is there):
  RUN_DIR/analysis/<stream>/spectrum.csv, density_kde.csv, rlc_in_sample.csv, rlc_held_out.csv, summary.json
  RUN_DIR/retrain/*/retrain_history.csv   (python -m spectral.retrain; one panel per setting)
  RUN_DIR/toy/toy_best.csv                (python -m spectral.toy RUN_DIR)
  RUN_DIR/toy-seedcode/toy_best.csv       (optional: python -m spectral.toy RUN_DIR --seed-code-const)
Writes into ``out`` (default RUN_DIR/figures): fig1_spectrum … fig6_toy as PNG + PDF + data, and
fits.json with every fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import jsonio, layout
from ..errors import SpectralError
from ..layout import RunDir
from . import figures, fits


@dataclass
class ReportConfig:
    """stream : which analysed stream to report; fit_range : ranks of the spectrum's power-law fit
    (the paper's 1…500; cut to the ranks available, with a note in the fit); g0 : G_0 of the bound in
    Fig. 4, None for the measured RMS norm of the stored gradients (or e.g. the clipping bound C)."""

    stream: str = "clipped"
    fit_range: tuple = (1, 500)
    g0: float | None = None


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SpectralError(f"{path} is not a readable CSV table ({exc})") from None


def _batch_key(name: str) -> float:
    size = name.split("@B", 1)[1]
    return float("inf") if size == "inf" else float(size)


def summary_batch(run: RunDir) -> str:
    """The run's own expected batch size, from its manifest."""
    try:
        return f"{json.loads((run.store / layout.MANIFEST).read_text())['dp']['batch_size']:g}"
    except (OSError, KeyError, ValueError):
        return "?"


def report(run_dir, config: ReportConfig | None = None, out=None, toy_dir=None, retrain_dir=None) -> dict:
    """Fit and draw everything available for ``run_dir``; returns {"fits": …, "figures": […], "missing": […]}."""
    config = config or ReportConfig()
    stream, fit_range = config.stream, tuple(config.fit_range)
    run = RunDir(run_dir)
    run_dir = run.root
    if not run_dir.is_dir():
        raise SpectralError(f"{run_dir}: no such run directory")
    out = Path(out) if out else run.figures
    analysis = run.analysis(stream)
    toy_dir = Path(toy_dir) if toy_dir else run.toy()
    retrain_dir = Path(retrain_dir) if retrain_dir else run.retrain()
    result = {"fits": {}, "figures": [], "missing": []}
    title = run_dir.name

    spectrum = _read_csv(analysis / layout.SPECTRUM)
    summary = json.loads((analysis / layout.SUMMARY).read_text()) if (analysis / layout.SUMMARY).is_file() else {}
    d_run = summary.get("d")
    if spectrum is not None:
        sv = spectrum.singular_value.to_numpy()
        fit = fits.spectrum_fit(sv, fit_range)
        result["fits"]["spectrum"] = fit
        ranges = fits.range_table(sv)
        result["fits"]["spectrum_ranges"] = ranges.to_dict(orient="records")
        result["figures"] += figures.spectrum_figure(
            spectrum,
            fit,
            out / "fig1_spectrum",
            f"Spectrum of the {stream} gradients ({title}, n={summary.get('n')}, d={d_run:,})" if d_run else "",
            ranges=ranges,
        )
    else:
        result["missing"].append(f"spectrum ({analysis / layout.SPECTRUM}; run python -m spectral.analyse)")

    kde, authors = _read_csv(analysis / layout.DENSITY_KDE), _read_csv(analysis / layout.DENSITY_PAPER)
    if kde is not None or authors is not None:
        result["figures"] += figures.density_figure(kde, out / "fig2_density", authors=authors)
    else:
        result["missing"].append(f"spectral density ({layout.DENSITY_KDE}, {layout.DENSITY_PAPER})")

    curves = {
        label: c
        for label, c in (
            ("in-sample", _read_csv(analysis / layout.RLC_IN_SAMPLE)),
            ("held-out", _read_csv(analysis / layout.RLC_HELD_OUT)),
        )
        if c is not None
    }
    if "in-sample" in curves and summary.get("n"):
        # components fitted on the same n steps explain them exactly at k = n: G_k -> 0 there is
        # overfitting, not decay, so the in-sample curve is read up to n/2 (the held-out one to its end)
        curves["in-sample"] = curves["in-sample"][curves["in-sample"].k <= summary["n"] // 2]
    if curves:
        rlc_fits = {label: fits.rlc_fit(c) for label, c in curves.items()}
        result["fits"]["rlc"] = rlc_fits
        result["fits"]["rlc_statistics"] = {label: fits.rlc_statistics(c) for label, c in curves.items()}
        result["figures"] += figures.rlc_figure(curves, rlc_fits, out / "fig3_rlc")
        frames = {label: fits.dimension_curve(c, g0=config.g0) for label, c in curves.items()}
        if d_run:  # the bound's factor at this run's own d, however far beyond the measured k that reaches
            result["fits"]["dimension_factor_at_d"] = {
                label: fits.dimension_curve(c, ds=[d_run], g0=config.g0, max_decades=None).iloc[0].to_dict()
                for label, c in curves.items()
            }
        result["figures"] += figures.dimension_figure(
            frames,
            out / "fig4_dimension",
            d_run=d_run,
            g0_label="G_0 = measured RMS" if config.g0 is None else f"G_0 = {config.g0:g}",
        )
    else:
        result["missing"].append("restricted-Lipschitz curves (rlc_in_sample.csv / rlc_held_out.csv)")

    histories, majority = [], None
    for path in sorted([retrain_dir / layout.RETRAIN_HISTORY, *retrain_dir.glob(f"*/{layout.RETRAIN_HISTORY}")]):
        h = _read_csv(path)
        if h is not None:
            histories.append(h if "setting" in h else h.assign(setting=path.parent.name))
            saved = path.parent / layout.RETRAIN_SUMMARY
            majority = majority or (json.loads(saved.read_text()).get("majority_accuracy") if saved.is_file() else None)
    if histories:
        result["figures"] += figures.retrain_figure(
            pd.concat(histories, ignore_index=True), out / "fig5_retrain", majority=majority
        )
    else:
        result["missing"].append(f"subspace retraining ({retrain_dir}; run python -m spectral.retrain)")

    batch_dirs = sorted(run.root.glob(f"analysis/{stream}@B*"), key=lambda p: _batch_key(p.name))
    if spectrum is not None and batch_dirs:
        panels = {
            f"measured (batch {summary_batch(run)})": {
                "spectrum": spectrum,
                "n": summary.get("n"),
                "held_out": curves.get("held-out"),
            }
        }
        for path in batch_dirs:
            sp = _read_csv(path / layout.SPECTRUM)
            if sp is not None:
                panels[f"predicted at {path.name.split('@B')[1]}"] = {
                    "spectrum": sp,
                    "n": summary.get("n"),
                    "held_out": _read_csv(path / layout.RLC_HELD_OUT),
                }
        batch_fits = {}
        for label, p in panels.items():
            sv = np.sqrt(p["spectrum"].eigenvalue.clip(lower=0)).to_numpy()
            sv = sv[sv > 0]
            f = {"slope": None, "c_rms": None, "c_max": None}
            if len(sv) > 2:
                f.update(slope=fits.spectrum_fit(sv, fit_range)["slope"])
            if p["held_out"] is not None:
                f.update(c_rms=fits.rlc_fit(p["held_out"])["c"], c_max=fits.rlc_fit(p["held_out"], "max")["c"])
            batch_fits[label] = f
        result["fits"]["batch"] = batch_fits
        result["figures"] += figures.batch_figure(panels, batch_fits, out / "fig7_batch")

    best = _read_csv(toy_dir / layout.TOY_BEST)
    seed_code = _read_csv(layout.seed_code_twin(toy_dir) / layout.TOY_BEST)
    if best is not None:
        if seed_code is not None:  # the seed code's const mode, drawn beside the correct one
            extra = seed_code[seed_code["mode"] == "const"].assign(mode="const as in the seed code")
            best = pd.concat([best, extra], ignore_index=True)
        result["figures"] += figures.toy_figure(best, out / "fig6_toy")
    else:
        result["missing"].append(f"geometric-median toy ({toy_dir}; run python -m spectral.toy {run_dir})")

    if not result["figures"]:
        raise SpectralError(f"{run_dir} has nothing to report: run python -m spectral.analyse {run_dir} first")
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.FITS).write_text(jsonio.dumps(result["fits"], indent=1))
    return result
