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

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import jsonio, layout
from ..analyse import rlc
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


@dataclass
class Sources:
    """Where a report reads from, and the analysis tables several figures share (read once)."""

    run: RunDir
    config: ReportConfig
    toy_dir: Path
    retrain_dir: Path

    @property
    def analysis(self) -> Path:
        return self.run.analysis(self.config.stream)

    @functools.cached_property
    def summary(self) -> dict:
        path = self.analysis / layout.SUMMARY
        return json.loads(path.read_text()) if path.is_file() else {}

    @functools.cached_property
    def spectrum(self) -> pd.DataFrame | None:
        return _read_csv(self.analysis / layout.SPECTRUM)

    @functools.cached_property
    def all_curves(self) -> dict:
        """The restricted-Lipschitz curves as the analyse stage wrote them, every k."""
        curves = {}
        for label, name in (("in-sample", layout.RLC_IN_SAMPLE), ("held-out", layout.RLC_HELD_OUT)):
            c = _read_csv(self.analysis / name)
            if c is not None:
                curves[label] = c
        return curves

    @property
    def fitted_to(self) -> dict:
        """The last k each curve is read to: n/2 for the in-sample one (components fitted on the same n
        steps explain them exactly at k = n: G_k -> 0 there is overfitting, not decay)."""
        n = self.summary.get("n")
        return {"in-sample": rlc.in_sample_readable(n)} if n and "in-sample" in self.all_curves else {}

    @property
    def curves(self) -> dict:
        """The curves up to the k they are read to (fits, the dimension factor, the batch figure)."""
        last = self.fitted_to
        return {label: c[c.k <= last[label]] if label in last else c for label, c in self.all_curves.items()}


TAIL_FROM = 10  # Fig. 1's second fit starts past the knee the spectra show near k = 10


# Each section: load(sources) -> data, or None when its inputs are missing; draw(data, sources, out) ->
# (fits: dict, figure paths); missing: what to run when the inputs are not there.
def load_spectrum(src: Sources):
    return src.spectrum


def draw_spectrum(spectrum: pd.DataFrame, src: Sources, out: Path):
    sv, d, n = spectrum.singular_value.to_numpy(), src.summary.get("d"), src.summary.get("n")
    fit, ranges = fits.spectrum_fit(sv, tuple(src.config.fit_range)), fits.range_table(sv)
    # past the knee near k = 10: a second fit from there to the first fit's end (when 3+ ranks remain)
    tail = fits.spectrum_fit(sv, (TAIL_FROM, fit["range"][1])) if fit["range"][1] >= TAIL_FROM + 2 else None
    title = f"Spectrum of the {src.config.stream} gradients ({src.run.root.name}, n={n}, d={d:,})" if d else ""
    paths = figures.spectrum_figure(spectrum, fit, out / "fig1_spectrum", title, ranges=ranges, n=n, tail=tail)
    result = {"spectrum": fit, "spectrum_ranges": ranges.to_dict(orient="records")}
    return {**result, "spectrum_tail": tail} if tail else result, paths


def load_density(src: Sources):
    kde, authors = _read_csv(src.analysis / layout.DENSITY_KDE), _read_csv(src.analysis / layout.DENSITY_PAPER)
    return None if kde is None and authors is None else (kde, authors)


def draw_density(tables, src: Sources, out: Path):
    kde, authors = tables
    lam = src.spectrum.eigenvalue if src.spectrum is not None and "eigenvalue" in src.spectrum else None
    data_range = (float(lam[lam > 0].min()), float(lam.max())) if lam is not None and (lam > 0).any() else None
    return {}, figures.density_figure(kde, out / "fig2_density", authors=authors, data_range=data_range)


def load_rlc(src: Sources):
    return src.curves or None


def draw_rlc(curves: dict, src: Sources, out: Path):
    g0, d_run = src.config.g0, src.summary.get("d")
    rlc_fits = {label: fits.rlc_fit(c) for label, c in curves.items()}
    result = {
        "rlc": rlc_fits,
        "rlc_statistics": {label: fits.rlc_statistics(c) for label, c in curves.items()},
    }
    paths = figures.rlc_figure(src.all_curves, rlc_fits, out / "fig3_rlc", fitted_to=src.fitted_to)
    frames = {label: fits.dimension_curve(c, g0=g0) for label, c in curves.items()}
    if d_run:  # the bound's factor at this run's own d, however far beyond the measured k that reaches
        result["dimension_factor_at_d"] = {
            label: fits.dimension_curve(c, ds=[d_run], g0=g0, max_decades=None).iloc[0].to_dict()
            for label, c in curves.items()
        }
    g0_label = "G_0 = measured RMS" if g0 is None else f"G_0 = {g0:g}"
    paths += figures.dimension_figure(frames, out / "fig4_dimension", d_run=d_run, g0_label=g0_label)
    return result, paths


def load_retrain(src: Sources):
    histories, majority = [], None
    found = [src.retrain_dir / layout.RETRAIN_HISTORY, *src.retrain_dir.glob(f"*/{layout.RETRAIN_HISTORY}")]
    for path in sorted(found):
        h = _read_csv(path)
        if h is not None:
            histories.append(h if "setting" in h else h.assign(setting=path.parent.name))
            saved = path.parent / layout.RETRAIN_SUMMARY
            majority = majority or (json.loads(saved.read_text()).get("majority_accuracy") if saved.is_file() else None)
    return (pd.concat(histories, ignore_index=True), majority) if histories else None


def draw_retrain(loaded, src: Sources, out: Path):
    history, majority = loaded
    return {}, figures.retrain_figure(history, out / "fig5_retrain", majority=majority)


def load_batch(src: Sources):
    """The measured spectrum and held-out curve with the predictions at other batch sizes."""
    dirs = sorted(src.run.root.glob(f"analysis/{src.config.stream}@B*"), key=lambda p: _batch_key(p.name))
    if src.spectrum is None or not dirs:
        return None
    n = src.summary.get("n")
    panels = {
        f"measured (batch {summary_batch(src.run)})": {
            "spectrum": src.spectrum,
            "n": n,
            "held_out": src.curves.get("held-out"),
        }
    }
    for path in dirs:
        sp = _read_csv(path / layout.SPECTRUM)
        if sp is not None:
            panels[f"predicted at {path.name.split('@B')[1]}"] = {
                "spectrum": sp,
                "n": n,
                "held_out": _read_csv(path / layout.RLC_HELD_OUT),
            }
    return panels


def draw_batch(panels: dict, src: Sources, out: Path):
    batch_fits = {}
    for label, p in panels.items():
        sv = np.sqrt(p["spectrum"].eigenvalue.clip(lower=0)).to_numpy()
        sv = sv[sv > 0]
        f = {"slope": None, "c_rms": None, "c_max": None}
        if len(sv) > 2:
            f.update(slope=fits.spectrum_fit(sv, tuple(src.config.fit_range))["slope"])
        if p["held_out"] is not None:
            f.update(c_rms=fits.rlc_fit(p["held_out"])["c"], c_max=fits.rlc_fit(p["held_out"], "max")["c"])
        batch_fits[label] = f
    return {"batch": batch_fits}, figures.batch_figure(panels, batch_fits, out / "fig7_batch")


def load_groups(src: Sources):
    """Per-group eigenvalues, summary and in-sample curves (``analyse --groups``), or None."""
    tables = [_read_csv(src.analysis / name) for name in (layout.GROUPS, layout.GROUPS_SUMMARY, layout.GROUPS_RLC)]
    return None if any(t is None for t in tables) else tables


def group_fits(eigenvalues: pd.DataFrame, summary: pd.DataFrame, curves: pd.DataFrame, fit_range, n) -> pd.DataFrame:
    """The summary with each group's slope of σ_k over ``fit_range`` (clipped to its positive ranks) and
    in-sample exponent c (rms, read to k = n/2)."""
    rows = []
    for g in summary.itertuples(index=False):
        lam = eigenvalues[eigenvalues.group == g.group].sort_values("rank").eigenvalue.to_numpy()
        row = {**g._asdict(), "slope": None, "slope_range": None, "c_in_sample_rms": None}
        if len(lam) >= 3:
            fit = fits.spectrum_fit(np.sqrt(lam), (fit_range[0], min(fit_range[1], len(lam))))
            row.update(slope=fit["slope"], slope_range=f"{fit['range'][0]}-{fit['range'][1]}")
        curve = curves[(curves.group == g.group) & curves.k.between(0, rlc.in_sample_readable(n) if n else 10**9)]
        if (curve.k >= 1).sum() >= 3 and (curve[curve.k >= 1]["rms"] > 0).all():
            row["c_in_sample_rms"] = fits.rlc_fit(curve, "rms")["c"]
        rows.append(row)
    return pd.DataFrame(rows)


def draw_groups(tables, src: Sources, out: Path):
    eigenvalues, summary, curves = tables
    table = group_fits(eigenvalues, summary, curves, tuple(src.config.fit_range), src.summary.get("n"))
    return {"groups": table.to_dict(orient="records")}, figures.groups_figure(
        eigenvalues, table, out / "fig8_groups", n=src.summary.get("n")
    )


def load_toy(src: Sources):
    best = _read_csv(src.toy_dir / layout.TOY_BEST)
    seed_code = _read_csv(layout.seed_code_twin(src.toy_dir) / layout.TOY_BEST)
    if best is not None and seed_code is not None:  # the seed code's const mode, drawn beside the correct one
        extra = seed_code[seed_code["mode"] == "const"].assign(mode="const as in the seed code")
        best = pd.concat([best, extra], ignore_index=True)
    return best


def draw_toy(best: pd.DataFrame, src: Sources, out: Path):
    return {}, figures.toy_figure(best, out / "fig6_toy")


SECTIONS = (  # (name, load, draw, what is missing when load finds nothing; None: an optional section)
    (
        "spectrum",
        load_spectrum,
        draw_spectrum,
        f"spectrum ({{analysis}}/{layout.SPECTRUM}; run python -m spectral.analyse)",
    ),
    ("density", load_density, draw_density, f"spectral density ({layout.DENSITY_KDE}, {layout.DENSITY_PAPER})"),
    ("rlc", load_rlc, draw_rlc, f"restricted-Lipschitz curves ({layout.RLC_IN_SAMPLE} / {layout.RLC_HELD_OUT})"),
    ("retrain", load_retrain, draw_retrain, "subspace retraining ({retrain}; run python -m spectral.retrain)"),
    ("batch", load_batch, draw_batch, None),  # only for runs analysed with --batch-size
    ("groups", load_groups, draw_groups, None),  # only for runs analysed with --groups
    ("toy", load_toy, draw_toy, "geometric-median toy ({toy}; run python -m spectral.toy {run})"),
)


def report(run_dir, config: ReportConfig | None = None, out=None, toy_dir=None, retrain_dir=None) -> dict:
    """Fit and draw everything available for ``run_dir``; returns {"fits": …, "figures": […], "missing": […]}."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise SpectralError(f"{run.root}: no such run directory")
    src = Sources(
        run,
        config or ReportConfig(),
        Path(toy_dir) if toy_dir else run.toy(),
        Path(retrain_dir) if retrain_dir else run.retrain(),
    )
    out = Path(out) if out else run.figures
    result = {"fits": {}, "figures": [], "missing": []}
    for _, load, draw, missing in SECTIONS:
        data = load(src)
        if data is None:
            if missing:
                where = {"analysis": src.analysis, "retrain": src.retrain_dir, "toy": src.toy_dir, "run": run.root}
                result["missing"].append(missing.format(**where))
            continue
        fitted, paths = draw(data, src, out)
        result["fits"].update(fitted)
        result["figures"] += paths
    if not result["figures"]:
        raise SpectralError(f"{run.root} has nothing to report: run python -m spectral.analyse {run.root} first")
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.FITS).write_text(jsonio.dumps(result["fits"], indent=1))
    return result
