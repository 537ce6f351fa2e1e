"""Fig. 6: the geometric-median toy's train and test loss against d, per decay mode (from saved data)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.lines
import pandas as pd

from ..plotting import COLORS, MARKERS, new_figure, save, style
from .geomedian import MODES

MODE_LABELS = {
    "const": "const (a_j = g0)",
    "quarter": "quarter (a_j = g0 j^-1/4)",
    "sqrt": "sqrt (a_j = g0 j^-1/2)",
    "linear": "linear (a_j = g0 j^-1)",
    "quadratic": "quadratic (a_j = g0 j^-2)",
}


def toy(best: pd.DataFrame, *, title: str = "", axes=None):
    """Per decay mode vs d, at the best (T, lr) per point: the train excess loss F(β̄) − F(β*) on log
    axes (mean over seeds; the quantity the theory bounds) and the test loss (mean ± std over seeds).

    Rows whose mode is not one of the five decay modes (e.g. "const as in the seed code") get a
    third panel of their own, on a log scale beside the correct const mode, so that their very
    different scale does not flatten the others. ``axes``: one per panel (None: a new figure).
    Returns the figure; saves nothing (:func:`toy_figure` saves it with its data).
    """
    main, extra = best[best["mode"].isin(MODES)], best[~best["mode"].isin(MODES)]
    panels = 3 if len(extra) else 2
    with style(**{"figure.figsize": (5.0 * panels, 4.0)}):
        own = axes is None  # a figure of our own gets the title; the caller's axes keep theirs
        if own:
            fig, axes = new_figure(1, panels)
        elif len(axes) != panels:
            raise ValueError(f"this figure has {panels} panels; got {len(axes)} axes")
        else:
            fig = axes[0].figure
        for i, (mode, g) in enumerate(main.groupby("mode", sort=False)):
            kw = dict(marker=MARKERS[i], ms=4, color=COLORS[i], label=MODE_LABELS.get(mode, mode))
            axes[0].loglog(g.d, g.train_excess_mean, **kw)
            if "rlc_factor" in g and g.train_excess_mean.iloc[0] > 0:
                # the bound's d-dependence, scaled to meet the measurement at the smallest d: compare shapes
                scale = g.train_excess_mean.iloc[0] / g.rlc_factor.iloc[0]
                axes[0].loglog(g.d, g.rlc_factor * scale, ":", color=COLORS[i], lw=1.0)
            if "T" in g:  # the chosen number of steps at each point
                for d, y, T in zip(g.d, g.train_excess_mean, g["T"]):
                    axes[0].annotate(f"{T:g}", (d, y), xytext=(3, -2 - 3 * i), textcoords="offset points",
                                     fontsize=5.5, color=COLORS[i])  # fmt: skip
            axes[1].errorbar(g.d, g.test_mean, yerr=g.test_std, capsize=2, **kw)
        axes[0].set_ylabel("train excess loss F(β̄) − F(β*) (mean over seeds)")
        axes[0].set_title("excess empirical loss")
        axes[1].set_xscale("log")
        axes[1].set_ylabel("test loss F(β̄) of the averaged iterate")
        axes[1].set_title("test loss")
        for ax in axes[:2]:
            ax.set_xlabel("dimension d")
        handles, _ = axes[0].get_legend_handles_labels()
        bound = matplotlib.lines.Line2D(
            [], [], color="0.4", ls=":", label="the bound's d-dependence (rlc_factor, scaled)"
        )
        axes[0].legend(handles=handles + [bound], title="coefficient decay (numbers: chosen T)", loc="upper left",
                       fontsize=7)  # fmt: skip
        if len(extra):
            _seed_code_panel(axes[2], main, extra)
        if own:
            fig.suptitle(title or "Private geometric median vs dimension (best T, lr per point)")
    return fig


def toy_figure(best: pd.DataFrame, stem, title: str = "") -> list[Path]:
    """:func:`toy` saved as ``<stem>.png/.pdf`` with the table it shows (``<stem>.csv``)."""
    return save(toy(best, title=title), stem, {"": best})


def _seed_code_panel(ax, main: pd.DataFrame, extra: pd.DataFrame) -> None:
    """The correct const mode beside the rows of other modes (the seed code's a_j = g0·j), log scale."""
    for i, (mode, g) in enumerate(pd.concat([main[main["mode"] == "const"], extra]).groupby("mode", sort=False)):
        ax.errorbar(
            g.d,
            g.test_mean,
            yerr=g.test_std,
            marker=MARKERS[i],
            ms=4,
            capsize=2,
            color=COLORS[0] if mode == "const" else COLORS[5],
            label=MODE_LABELS.get(mode, "the seed code's a_j = g0·j" if "seed code" in mode else mode),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("test loss F(β̄) (log scale)")
    ax.set_title("const: a_j = g0 vs the seed code's g0·j")
    ax.legend(loc="upper left")
