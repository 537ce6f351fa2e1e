"""The paper's figures written to disk: each draws with :mod:`spectral.report.plot` (the same functions a
notebook calls as ``sp.plot``) and saves ``<stem>.png`` and ``<stem>.pdf`` with what it plotted beside them
(``<stem>.csv`` / ``<stem>.json``), so a figure can be redrawn or re-styled without recomputing anything.
Each returns the written paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..plotting import save
from ..toy.figure import toy_figure  # noqa: F401 (fig. 6, drawn by the toy's own module)
from . import plot


def spectrum_figure(spectrum: pd.DataFrame, fit: dict, stem, title="", ranges=None, n=None, tail=None) -> list[Path]:
    """Fig. 1 (:func:`plot.spectrum`); the table has the fitted values beside σ_k and σ_k/√n."""
    fig = plot.spectrum(spectrum, fit, tail=tail, ranges=ranges, n=n, title=title)
    k, s = spectrum["rank"].to_numpy(), spectrum["singular_value"].to_numpy()
    table = pd.DataFrame({"rank": k, "singular_value": s, "normalised": s * (1 / np.sqrt(n) if n else 1.0)})
    for name, f in (("fitted", fit), ("fitted_tail", tail)):
        if f is not None:
            inside = (k >= f["range"][0]) & (k <= f["range"][1])
            table[name] = np.where(inside, np.exp(f["intercept"]) * k.astype(float) ** f["slope"], np.nan)
    tables = {"": table} if ranges is None else {"": table, "_ranges": ranges}
    return save(fig, stem, tables, {"fit": fit, "tail_fit": tail, "n": n})


def density_figure(kde, stem, authors=None, title="", data_range=None) -> list[Path]:
    """Fig. 2 (:func:`plot.density`): ``<stem>.csv`` ours, ``<stem>_authors.csv`` the authors'."""
    fig = plot.density(kde, authors, data_range=data_range, title=title)
    tables = {name: t for name, t in (("_authors", authors), ("", kde)) if t is not None}
    return save(fig, stem, tables)


def rlc_figure(curves: dict, fits: dict, stem, column="rms", title="", fitted_to=None) -> list[Path]:
    """Fig. 3 (:func:`plot.rlc`): every curve's ``k``, ``column`` and ``max`` in one table."""
    fig = plot.rlc(curves, fits, column=column, fitted_to=fitted_to, title=title)
    table = pd.concat(
        [c[["k", column, *(["max"] if "max" in c else [])]].assign(curve=label) for label, c in curves.items()],
        ignore_index=True,
    )
    return save(fig, stem, {"": table}, {"fits": fits, "fitted_to": fitted_to or {}})


def dimension_figure(frames: dict, stem, d_run=None, g0_label="", title="") -> list[Path]:
    """Fig. 4 (:func:`plot.dimension`)."""
    fig = plot.dimension(frames, d_run=d_run, g0_label=g0_label, title=title)
    table = pd.concat([f.assign(curve=label) for label, f in frames.items()], ignore_index=True)
    return save(fig, stem, {"": table}, {"g0": g0_label})


def retrain_figure(history: pd.DataFrame, stem, metric="accuracy", title="", majority=None) -> list[Path]:
    """Fig. 5 (:func:`plot.retrain`); the table is the per-step mean, std and count over seeds."""
    fig = plot.retrain(history, metric=metric, majority=majority, title=title)
    return save(fig, stem, {"": plot.retrain_panels(history, metric)[1]}, {"majority_accuracy": majority})


def batch_figure(panels: dict, fits_by_label: dict, stem, title="") -> list[Path]:
    """Fig. 7 (:func:`plot.batch`): each panel's spectrum and held-out curve."""
    fig = plot.batch(panels, fits_by_label, title=title)
    tables = {}
    for i, (label, p) in enumerate(panels.items()):
        tables[f"_{i}_spectrum"] = p["spectrum"].assign(label=label)
        if p.get("held_out") is not None:
            tables[f"_{i}_held_out"] = p["held_out"][p["held_out"].k >= 1].assign(label=label)
    return save(fig, stem, tables, {"fits": fits_by_label})


def groups_figure(eigenvalues: pd.DataFrame, table: pd.DataFrame, stem, n=None) -> list[Path]:
    """Fig. 8 (:func:`plot.groups`)."""
    return save(plot.groups(eigenvalues, table, n=n), stem, {"": table, "_eigenvalues": eigenvalues})
