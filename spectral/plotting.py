"""The figures' shared look and saving, for every stage and study that draws (the ground floor: it
imports nothing from spectral, so the toy and the experiments draw without importing ``report``).

Figures are plain :class:`~matplotlib.figure.Figure` objects (no pyplot state, no global backend), drawn
inside :func:`style` and written by :func:`save` with the data they show beside them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from . import jsonio

STYLE = {
    "figure.figsize": (6.0, 4.2),
    "figure.dpi": 110,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.framealpha": 0.85,
    "figure.constrained_layout.use": True,
}
COLORS = matplotlib.colormaps["tab10"].colors
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def new_figure(rows: int = 1, cols: int = 1, **subplots):
    """``(figure, axes)`` on a plain :class:`~matplotlib.figure.Figure`: no pyplot state and no global
    backend, so drawing works the same in scripts, servers and Jupyter. Call inside ``style()``."""
    fig = Figure()
    return fig, fig.subplots(rows, cols, **subplots)


def style(**overrides):
    """The figures' rc settings as a context (``with style(): fig, ax = new_figure()``)."""
    return matplotlib.rc_context({**STYLE, **overrides})


def save(fig, stem, tables: dict | None = None, meta: dict | None = None) -> list[Path]:
    """Write ``fig`` as ``<stem>.png``/``.pdf``, each table as ``<stem><name>.csv`` and ``meta`` as
    ``<stem>.json``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix))
        paths.append(stem.with_suffix(suffix))
    for name, table in (tables or {}).items():
        path = stem.parent / f"{stem.name}{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    if meta is not None:
        path = stem.with_suffix(".json")
        path.write_text(jsonio.dumps(meta, indent=1))
        paths.append(path)
    return paths


def decimal_log_ticks(axis) -> None:
    """Plain decimal labels at 1, 2 and 5 × 10^j on a log axis, no labelled minor ticks: an axis spanning
    less than a decade otherwise mixes "10^-2" and "6 × 10^-3" styles."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
