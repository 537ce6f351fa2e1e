"""The paper's figures, drawn from saved data only.

Every function takes tables (DataFrames) and fit dicts, writes ``<stem>.png`` and ``<stem>.pdf``,
and saves what it plotted beside them (``<stem>.csv`` / ``<stem>.json``), so a figure can be
redrawn or re-styled without recomputing anything. Returns the written paths.

1. spectrum_figure   singular value vs rank (log–log) with the fitted power law
2. density_figure    kernel densities of the spectrum: the authors' presentation and ours
3. rlc_figure        restricted-Lipschitz curve G_k vs k with the k^{-1/2} reference
4. dimension_figure  the RLC bound's dimension factor vs d, against the same bound without decay
5. retrain_figure    accuracy vs step when retraining in top-r subspaces
6. toy_figure        geometric-median toy: train and test loss vs d per decay mode
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
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


def decimal_log_ticks(axis) -> None:
    """Plain decimal labels at 1, 2 and 5 × 10^j on a log axis, no labelled minor ticks: an axis spanning
    less than a decade otherwise mixes "10^-2" and "6 × 10^-3" styles."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


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
def spectrum_figure(spectrum: pd.DataFrame, fit: dict, stem, title: str = "", ranges=None) -> list[Path]:
    """σ_k vs k, log–log, with the fitted power law, a slope −1 reference and the slopes over other rank
    ranges as a table in the figure. ``spectrum``: columns ``rank``, ``singular_value``; ``fit``:
    fits.spectrum_fit; ``ranges``: fits.range_table (optional)."""
    k, s = spectrum["rank"].to_numpy(), spectrum["singular_value"].to_numpy()
    first, last = fit["range"]
    kk = np.arange(first, last + 1)
    fitted = np.exp(fit["intercept"]) * kk ** fit["slope"]
    with style():
        fig, ax = new_figure()
        ax.loglog(k, s, "o", ms=3, color=COLORS[0], alpha=0.8, label="estimated σ_k")
        ax.loglog(kk, fitted, "-", color=COLORS[3], label=_fit_label(fit))
        ax.loglog(k, s[0] / k, "--", color="0.45", lw=1.0, label="slope −1 (steeper ⇒ G_k falls faster than k^(-1/2))")
        ax.set_xlabel("rank k")
        ax.set_ylabel("singular value σ_k = √λ_k of the gradient trajectory")
        ax.set_title(title or "Spectrum of the stored gradients")
        ax.legend(loc="lower left")
        if ranges is not None and len(ranges):
            rows = [f"{'ranks':>9}  {'slope':>6}  95% interval"] + [
                f"{int(r.first):>4}–{int(r.last):<4}  {r.slope:6.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                for r in ranges.itertuples()
            ]
            ax.text(
                0.98,
                0.98,
                "\n".join(rows),
                transform=ax.transAxes,
                ha="right",
                va="top",
                family="monospace",
                fontsize=7,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
            )
    table = pd.DataFrame({"rank": k, "singular_value": s})
    table["fitted"] = np.where(
        (k >= first) & (k <= last), np.exp(fit["intercept"]) * k.astype(float) ** fit["slope"], np.nan
    )
    tables = {"": table} if ranges is None else {"": table, "_ranges": ranges}
    return save(fig, stem, tables, {"fit": fit})


# ---------------------------------------------------------------------- 2. density
AUTHORS_KDE = {"top": 500, "variance": 1e-6, "grid_len": 300_000, "grid_expand": 3e-4}


def density_figure(kde: pd.DataFrame | None, stem, singular_values=None, title: str = "") -> list[Path]:
    """Two presentations of the spectral density, side by side.

    left  the authors': linear-space Gaussian KDE of the top-500 singular values (:func:`linear_kde`
          with their settings, ``AUTHORS_KDE``), log–log axes, y from 1e-10 to 2e2
    right ours: KDE of log10 λ over all computed eigenvalues (``kde``: the analyse stage's
          density_kde.csv, columns ``eigenvalue``, ``density``, ``bandwidth``)
    Either may be missing. The right panel's data is ``<stem>.csv``; the left panel's inputs (the
    singular values and settings, from which it is redrawn exactly) are ``<stem>.json``, with every
    30th grid point in ``<stem>_authors.csv``.
    """
    from ..analyse.density import linear_kde

    panels = [p for p, there in (("authors", singular_values is not None), ("ours", kde is not None)) if there]
    tables, meta = {}, {}
    with style(**{"figure.figsize": (5.0 * len(panels), 4.0)}):
        fig, axes = new_figure(1, len(panels), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            if panel == "authors":
                top = np.sort(np.asarray(singular_values, dtype=float))[::-1][: AUTHORS_KDE["top"]]
                settings = {k: v for k, v in AUTHORS_KDE.items() if k != "top"}
                curve = linear_kde(top, **settings)
                ax.loglog(
                    curve.value,
                    curve.density,
                    color=COLORS[0],
                    label=f"bandwidth σ = {np.sqrt(settings['variance']):.5f}",
                )
                ax.set_ylim(1e-10, 2e2)
                ax.set_xlabel("singular value σ_k = λ(HᵀH)^(1/2)")
                ax.set_ylabel("density of KDE")
                ax.set_title(f"authors' presentation: top {len(top)} σ_k, linear-space KDE", fontsize=10)
                ax.legend(loc="lower left")
                tables["_authors"] = curve.iloc[::30]
                meta["authors"] = {**AUTHORS_KDE, "singular_values": top}
            else:
                keep = kde.density > kde.density.max() * 1e-6
                bw = f", bandwidth {kde.bandwidth.iloc[0]:.3f} in log10 λ" if "bandwidth" in kde else ""
                ax.loglog(kde.eigenvalue[keep], kde.density[keep], color=COLORS[1], label=f"{len(kde)}-point grid{bw}")
                ax.set_xlabel("eigenvalue λ of HᵀH")
                ax.set_ylabel("density (per decade of λ)")
                ax.set_title("ours: KDE of log10 λ over all computed eigenvalues", fontsize=10)
                ax.legend(loc="lower left")
                tables[""] = kde
        fig.suptitle(title or "Spectral density of the gradient trajectory")
    return save(fig, stem, tables, meta)


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
def dimension_figure(frames: dict, stem, d_run: int | None = None, g0_label: str = "", title: str = "") -> list[Path]:
    """The bound's dimension factor vs d from each measured G_k curve, against the same formula with
    G_k ≡ G_0 (no decay) and the classical G_0 √d (log–log). Dotted: G_k extrapolated beyond the measured
    k (at most as far as the frames reach, see fits.dimension_curve).

    frames : {label: fits.dimension_curve frame (d, rlc_factor, no_decay_factor, classical_factor, measured)}
    """
    tables = []
    with style():
        fig, ax = new_figure()
        for i, (label, f) in enumerate(frames.items()):
            ax.loglog(f.d[f.measured], f.rlc_factor[f.measured], color=COLORS[i], label=f"G_k {label}")
            joined = int(np.flatnonzero(f.measured.to_numpy()).max(initial=0))  # the dotted part joins the solid
            ax.loglog(f.d.iloc[joined:], f.rlc_factor.iloc[joined:], ":", color=COLORS[i])
            tables.append(f.assign(curve=label))
        widest = max(frames.values(), key=len)
        ax.loglog(widest.d, widest.no_decay_factor, "--", color="0.2", label="same bound, no decay (G_k = G_0)")
        ax.loglog(widest.d, widest.classical_factor, "-.", color="0.6", lw=1.0, label="G_0 √d (constants omitted)")
        if d_run and d_run <= widest.d.max():
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
        elif d_run:
            ax.text(
                0.98,
                0.02,
                f"this run's d = {d_run:,}: beyond a decade past the measured k",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="0.3",
            )
        ax.set_xlabel("dimension d")
        ax.set_ylabel("dimension factor G_0 + Σ_s 2^(s/2) G_(2^(s−1))")
        ax.set_title(title or "Dimension factor of the bound from the measured G_k")
        handles, _ = ax.get_legend_handles_labels()
        dotted = matplotlib.lines.Line2D(
            [], [], color="0.4", ls=":", label="G_k extrapolated (≤ 1 decade past measured k)"
        )
        ax.legend(handles=handles + [dotted], loc="upper left", title=g0_label or None)
    return save(fig, stem, {"": pd.concat(tables, ignore_index=True)}, {"g0": g0_label})


# ---------------------------------------------------------------------- 5. retraining
def _setting_title(tag: str) -> str:
    """``signal-public-nonprivate`` -> ``non-private; signal mode; subspace from public data``."""
    parts = tag.split("-")
    if len(parts) < 2:
        return tag
    privacy = "non-private" if "nonprivate" in parts[2:] else "DP"
    return f"{privacy}; {parts[0]} mode; subspace from {'public data' if parts[1] == 'public' else 'the trajectory'}"


def retrain_figure(
    history: pd.DataFrame, stem, metric: str = "accuracy", title: str = "", majority: float | None = None
) -> list[Path]:
    """Accuracy vs step per subspace rank and the unrestricted baseline: every seed's curve and their
    mean; one panel per setting (e.g. ``signal-trajectory``, ``signal-trajectory-nonprivate``), with
    the accuracy of always predicting the majority class (``majority``) when given.

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
            if majority is not None:
                ax.axhline(majority, color="0.5", ls="--", lw=0.9, label=f"majority class ({majority:.3f})")
            ax.set_xlabel("training step")
            ax.set_title(_setting_title(setting))
            ax.legend(loc="lower right")
        for row in axes:
            row[0].set_ylabel(f"dev {metric}\n(thin: each seed; line: their mean)")
        fig.suptitle(title or "Retraining with updates restricted to the top-r gradient subspace")
    return save(fig, stem, {"": stats}, {"majority_accuracy": majority})


# ---------------------------------------------------------------------- 6. toy
MODE_LABELS = {
    "const": "const (a_j = g0)",
    "quarter": "quarter (a_j = g0 j^-1/4)",
    "sqrt": "sqrt (a_j = g0 j^-1/2)",
    "linear": "linear (a_j = g0 j^-1)",
    "quadratic": "quadratic (a_j = g0 j^-2)",
}


def toy_figure(best: pd.DataFrame, stem, title: str = "") -> list[Path]:
    """Per decay mode vs d, at the best (T, lr) per point: the train excess loss F(β̄) − F(β*) on log
    axes (mean over seeds; the quantity the theory bounds) and the test loss (mean ± std over seeds).

    Rows whose mode is not one of the five decay modes (e.g. "const as in the seed code") get a
    third panel of their own, on a log scale beside the correct const mode, so that their very
    different scale does not flatten the others.
    """
    from ..toy.geomedian import MODES

    main, extra = best[best["mode"].isin(MODES)], best[~best["mode"].isin(MODES)]
    panels = 3 if len(extra) else 2
    with style(**{"figure.figsize": (5.0 * panels, 4.0)}):
        fig, axes = new_figure(1, panels)
        for i, (mode, g) in enumerate(main.groupby("mode", sort=False)):
            kw = dict(marker=MARKERS[i], ms=4, color=COLORS[i], label=MODE_LABELS.get(mode, mode))
            axes[0].loglog(g.d, g.train_excess_mean, **kw)
            axes[1].errorbar(g.d, g.test_mean, yerr=g.test_std, capsize=2, **kw)
        axes[0].set_ylabel("train excess loss F(β̄) − F(β*) (mean over seeds)")
        axes[0].set_title("excess empirical loss")
        axes[1].set_xscale("log")
        axes[1].set_ylabel("test loss F(β̄) of the averaged iterate")
        axes[1].set_title("test loss")
        for ax in axes[:2]:
            ax.set_xlabel("dimension d")
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
                    label=MODE_LABELS.get(mode, "the seed code's a_j = g0·j" if "seed code" in mode else mode),
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("dimension d")
            ax.set_ylabel("test loss F(β̄) (log scale)")
            ax.set_title("const: a_j = g0 vs the seed code's g0·j")
            ax.legend(loc="upper left")
        fig.suptitle(title or "Private geometric median vs dimension (best T, lr per point)")
    return save(fig, stem, {"": best})
