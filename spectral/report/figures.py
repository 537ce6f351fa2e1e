"""The paper's figures, drawn from saved data only.

Every function takes tables (DataFrames) and fit dicts, writes ``<stem>.png`` and ``<stem>.pdf``,
and saves what it plotted beside them (``<stem>.csv`` / ``<stem>.json``), so a figure can be
redrawn or re-styled without recomputing anything. Returns the written paths.

1. spectrum_figure   singular value vs rank (log–log) with the fitted power law
2. density_figure    kernel density of the spectrum (log–log)
3. rlc_figure        restricted-Lipschitz curve G_k vs k with the k^{-1/2} reference
4. dimension_figure  the RLC bound's dimension factor vs d, against G_0 √d
5. retrain_figure    accuracy vs step when retraining in top-r subspaces
6. toy_figure        geometric-median toy: train and test loss vs d per decay mode
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

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
        path.write_text(json.dumps(meta, indent=1, default=json_default))
        paths.append(path)
    return paths


def json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _fit_label(fit: dict, what: str = "slope") -> str:
    lo, hi = fit["ci_low"], fit["ci_high"]
    return (
        f"fit k={fit['range'][0]}–{fit['range'][1]}: {what} {fit['slope']:.2f} [{lo:.2f}, {hi:.2f}], R²={fit['r2']:.2f}"
    )


# ---------------------------------------------------------------------- 1. spectrum
def spectrum_figure(spectrum: pd.DataFrame, fit: dict, stem, title: str = "") -> list[Path]:
    """σ_k vs k, log–log. ``spectrum``: columns ``rank``, ``singular_value``; ``fit``: fits.spectrum_fit."""
    k, s = spectrum["rank"].to_numpy(), spectrum["singular_value"].to_numpy()
    first, last = fit["range"]
    kk = np.arange(first, last + 1)
    fitted = np.exp(fit["intercept"]) * kk ** fit["slope"]
    with style():
        fig, ax = new_figure()
        ax.loglog(k, s, "o", ms=3, color=COLORS[0], alpha=0.8, label="estimated σ_k")
        ax.loglog(kk, fitted, "-", color=COLORS[3], label=_fit_label(fit))
        ax.set_xlabel("rank k")
        ax.set_ylabel("singular value σ_k = √λ_k of the gradient trajectory")
        ax.set_title(title or "Spectrum of the stored gradients")
        ax.legend(loc="lower left")
    table = pd.DataFrame({"rank": k, "singular_value": s})
    table["fitted"] = np.where(
        (k >= first) & (k <= last), np.exp(fit["intercept"]) * k.astype(float) ** fit["slope"], np.nan
    )
    return save(fig, stem, {"": table}, {"fit": fit})


# ---------------------------------------------------------------------- 2. density
def density_figure(kde: pd.DataFrame, stem, title: str = "") -> list[Path]:
    """Kernel density of the eigenvalues: columns ``eigenvalue``, ``density`` (per log10 unit)."""
    with style():
        fig, ax = new_figure()
        keep = kde.density > kde.density.max() * 1e-6
        ax.loglog(kde.eigenvalue[keep], kde.density[keep], color=COLORS[0])
        ax.set_xlabel("eigenvalue λ of HᵀH")
        ax.set_ylabel("density (per decade of λ)")
        ax.set_title(title or "Kernel density of the top eigenvalues")
    return save(fig, stem, {"": kde})


# ---------------------------------------------------------------------- 3. RLC curve
def rlc_figure(curves: dict, fits: dict, stem, column: str = "rms", title: str = "") -> list[Path]:
    """G_k vs k (log–log) for each named curve (e.g. in-sample, held-out), with k^{-1/2} for reference.

    curves : {label: DataFrame with ``k`` and ``column``}; fits : {label: fits.rlc_fit}
    """
    tables = []
    with style():
        fig, ax = new_figure()
        anchor = None
        for i, (label, curve) in enumerate(curves.items()):
            c = curve[curve.k >= 1]
            text = label
            if label in fits:
                f = fits[label]
                text += f": c = {f['c']:.2f} [{f['c_low']:.2f}, {f['c_high']:.2f}] ({f['verdict']})"
            ax.loglog(c.k, c[column], marker=MARKERS[i], ms=3.5, color=COLORS[i], label=text)
            anchor = anchor or (float(c.k.iloc[0]), float(c[column].iloc[0]))
            tables.append(c[["k", column]].assign(curve=label))
        if anchor:
            k = np.logspace(0, np.log10(max(float(cv.k.max()) for cv in curves.values())), 50)
            ax.loglog(
                k,
                anchor[1] * (k / anchor[0]) ** -0.5,
                "--",
                color="0.4",
                label="k^(-1/2): boundary of dimension-freedom",
            )
        ax.set_xlabel("subspace dimension k")
        ax.set_ylabel(f"G_k = {column} over steps of ‖(I − P_k) g‖")
        ax.set_title(title or "Restricted-Lipschitz curve")
        ax.legend(loc="lower left")
    return save(fig, stem, {"": pd.concat(tables, ignore_index=True)}, {"fits": fits})


# ---------------------------------------------------------------------- 4. dimension factor
def dimension_figure(frames: dict, stem, d_run: int | None = None, title: str = "") -> list[Path]:
    """RLC dimension factor vs d for each named curve, and the classical G_0 √d (log–log).

    frames : {label: fits.dimension_curve frame (d, rlc_factor, classical_factor, measured)}
    """
    tables = []
    with style():
        fig, ax = new_figure()
        for i, (label, f) in enumerate(frames.items()):
            ax.loglog(f.d, f.rlc_factor, color=COLORS[i], label=f"RLC bound factor, G_k {label}")
            extrap = f[~f.measured]
            if len(extrap):
                ax.loglog(extrap.d, extrap.rlc_factor, ":", color="white", lw=1.2)
            tables.append(f.assign(curve=label))
        first = next(iter(frames.values()))
        ax.loglog(first.d, first.classical_factor, "--", color="0.3", label="classical G_0 √d")
        if d_run:
            ax.axvline(d_run, color="0.5", lw=0.8)
            ax.annotate(
                f"this run: d = {d_run:,}",
                (d_run, ax.get_ylim()[0]),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=8,
                color="0.3",
                rotation=90,
                ha="left",
                va="bottom",
            )
        ax.set_xlabel("dimension d")
        ax.set_ylabel("dimension factor of the DP-GD risk bound")
        ax.set_title(title or "Dimension dependence implied by the measured G_k")
        handles, _ = ax.get_legend_handles_labels()
        dotted = matplotlib.lines.Line2D(
            [], [], color="0.4", ls=":", label="(dotted: G_k extrapolated beyond measured k)"
        )
        ax.legend(handles=handles + [dotted], loc="upper left")
    return save(fig, stem, {"": pd.concat(tables, ignore_index=True)})


# ---------------------------------------------------------------------- 5. retraining
def _setting_title(tag: str) -> str:
    """``signal-public-nonprivate`` -> ``non-private; signal mode; subspace from public data``."""
    parts = tag.split("-")
    if len(parts) < 2:
        return tag
    privacy = "non-private" if "nonprivate" in parts[2:] else "DP"
    return f"{privacy}; {parts[0]} mode; subspace from {'public data' if parts[1] == 'public' else 'the trajectory'}"


def retrain_figure(history: pd.DataFrame, stem, metric: str = "accuracy", title: str = "") -> list[Path]:
    """Accuracy vs step per subspace rank and the unrestricted baseline: every seed's curve and their
    mean; one panel per setting (e.g. ``signal-trajectory``, ``signal-trajectory-nonprivate``).

    history : columns ``setting`` (optional), ``variant`` ("rank 10", …, "full"), ``seed``, ``step``, ``metric``
    """
    history = history if "setting" in history else history.assign(setting="")
    stats = (
        history.groupby(["setting", "variant", "step"], sort=False)[metric].agg(["mean", "std", "count"]).reset_index()
    )
    stats["std"] = stats["std"].fillna(0.0)
    settings = list(dict.fromkeys(stats.setting))
    cols = min(len(settings), 2)
    rows = -(-len(settings) // cols)
    with style(**{"figure.figsize": (4.8 * cols + 0.6, 3.6 * rows + 0.4)}):
        fig, axes = new_figure(rows, cols, sharey=True, squeeze=False)
        for ax in axes.flat[len(settings) :]:
            ax.set_visible(False)
        for ax, setting in zip(axes.flat, settings):
            variants = list(dict.fromkeys(stats[stats.setting == setting].variant))
            for i, variant in enumerate(variants):
                g = stats[(stats.setting == setting) & (stats.variant == variant)]
                color = "black" if variant == "full" else COLORS[i]
                runs = history[(history.setting == setting) & (history.variant == variant)]
                for _, run in runs.groupby("seed"):  # every seed, not a band over few of them
                    ax.plot(run.step, run[metric], color=color, lw=0.7, alpha=0.45)
                seeds = runs.seed.nunique()
                ax.plot(
                    g.step,
                    g["mean"],
                    marker=MARKERS[i % len(MARKERS)],
                    ms=3.5,
                    color=color,
                    label=f"{variant} (mean of {seeds} seed{'s' * (seeds > 1)})",
                )
            ax.set_xlabel("training step")
            ax.set_title(_setting_title(setting))
            ax.legend(loc="upper left")
        for row in axes:
            row[0].set_ylabel(f"dev {metric}\n(thin: each seed; line: their mean)")
        fig.suptitle(title or "Retraining with updates restricted to the top-r gradient subspace")
    return save(fig, stem, {"": stats})


# ---------------------------------------------------------------------- 6. toy
def toy_figure(best: pd.DataFrame, stem, title: str = "") -> list[Path]:
    """Train and test loss vs d per decay mode (mean ± std over seeds at the best (T, lr)).

    Rows whose mode is not one of the five decay modes (e.g. "const as in the seed code") get a
    third panel of their own, on a log scale beside the correct const mode, so that their very
    different scale does not flatten the others.
    """
    from ..toy.geomedian import MODES

    main, extra = best[best["mode"].isin(MODES)], best[~best["mode"].isin(MODES)]
    panels = 3 if len(extra) else 2
    with style(**{"figure.figsize": (5.0 * panels, 4.0)}):
        fig, axes = new_figure(1, panels)
        for ax, split in zip(axes, ("train", "test")):
            for i, (mode, g) in enumerate(main.groupby("mode", sort=False)):
                ax.errorbar(
                    g.d,
                    g[f"{split}_mean"],
                    yerr=g[f"{split}_std"],
                    marker=MARKERS[i],
                    ms=4,
                    capsize=2,
                    color=COLORS[i],
                    label=mode,
                )
            ax.set_xscale("log")
            ax.set_xlabel("dimension d")
            ax.set_ylabel(f"{split} loss F(β̄) of the averaged iterate")
            ax.set_title(f"{split} loss")
        axes[0].legend(title="coefficient decay", loc="upper left")
        if len(extra):
            ax = axes[2]
            for i, (mode, g) in enumerate(
                pd.concat([main[main["mode"] == "const"], extra]).groupby("mode", sort=False)
            ):
                ax.errorbar(
                    g.d,
                    g.test_mean,
                    yerr=g.test_std,
                    marker=MARKERS[i],
                    ms=4,
                    capsize=2,
                    color=COLORS[0] if mode == "const" else COLORS[5],
                    label=mode,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("dimension d")
            ax.set_ylabel("test loss F(β̄) (log scale)")
            ax.set_title("const: a_j = g0 vs the seed code's g0·j")
            ax.legend(loc="upper left")
        fig.suptitle(title or "Private geometric median: loss vs dimension (best T, lr per point)")
    return save(fig, stem, {"": best})
