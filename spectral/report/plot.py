"""The paper's figures as functions of data: ``sp.plot.spectrum(run.spectrum(), fit)`` and so on.

Each function takes the tables a stage wrote (DataFrames, fit dicts), draws on ``ax`` (or ``axes`` for
the figures with several panels) or on a new figure when none is given, and returns the
:class:`~matplotlib.figure.Figure`. Nothing is saved: :mod:`spectral.report.figures` calls these same
functions and then saves the figure with its data, so a notebook and the report draw alike.

1. spectrum   singular value vs rank (log–log) with the fitted power law
2. density    kernel densities of the spectrum: the authors' presentation and ours
3. rlc        restricted-Lipschitz curve G_k vs k with the k^{-1/2} reference
4. dimension  the RLC bound's dimension factor vs d, against the same bound without decay
5. retrain    accuracy vs step when retraining in restricted subspaces, with controls
6. toy        geometric-median toy: train and test loss vs d per decay mode
7. batch      measured and predicted spectra at other batch sizes
8. groups     spectra per layer or tensor (analyse --groups) and their energy shares
"""

from __future__ import annotations

import matplotlib
import matplotlib.axes
import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd

from ..plotting import COLORS, MARKERS, new_figure, style
from ..toy.figure import toy  # noqa: F401 (fig. 6, drawn by the toy's own module)


def canvas(ax=None, panels: int = 1, **subplots):
    """``(figure, [axes])``: the given axes (one ``Axes``, or a sequence of ``panels`` of them) or a new
    figure with ``panels`` side by side. Call inside ``style()`` so a new figure takes its size."""
    if ax is None:
        fig, axes = new_figure(1, panels, squeeze=False, **subplots)
        return fig, list(axes.flat)
    axes = [ax] if isinstance(ax, matplotlib.axes.Axes) else list(ax)
    if len(axes) != panels:
        raise ValueError(f"this figure has {panels} panel(s); got {len(axes)} axes")
    return axes[0].figure, axes


def _fit_label(fit: dict, what: str = "slope") -> str:
    boot = f", bootstrap [{fit['boot_low']:.2f}, {fit['boot_high']:.2f}]" if "boot_low" in fit else ""
    return (
        f"fit k={fit['range'][0]}–{fit['range'][1]}: {what} {fit['slope']:.2f} "
        f"[{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]{boot}, R²={fit['r2']:.2f}"
    )


# ---------------------------------------------------------------------- 1. spectrum
def spectrum(spectrum: pd.DataFrame, fit: dict | None = None, *, tail=None, ranges=None, n=None, title="", ax=None):
    """σ_k/√n vs k, log–log (divided by √n so runs of different length compare: σ_k² is a sum over n
    steps), with the fitted power law, a second fit past the knee (``tail``), a slope −1 reference and
    the slopes over other rank ranges as a table (``ranges``: fits.range_table).

    spectrum : columns ``rank``, ``singular_value`` (:meth:`spectral.api.Run.spectrum`)
    fit, tail : fits.spectrum_fit dicts (or None); n : the number of steps (None: σ_k undivided)
    """
    k, s = spectrum["rank"].to_numpy(), spectrum["singular_value"].to_numpy()
    scale = 1 / np.sqrt(n) if n else 1.0
    with style():
        fig, (ax,) = canvas(ax)
        ax.loglog(k, s * scale, "o", ms=3, color=COLORS[0], alpha=0.8, label="estimated σ_k" + ("/√n" if n else ""))
        for f, color in ((fit, COLORS[3]), (tail, COLORS[2])):
            if f is not None:
                kk = np.arange(f["range"][0], f["range"][1] + 1)
                ax.loglog(kk, scale * np.exp(f["intercept"]) * kk ** f["slope"], "-", color=color, label=_fit_label(f))
        ax.loglog(
            k, s[0] * scale / k, "--", color="0.45", lw=1.0,
            label="slope −1: our reconstruction of the paper's threshold\n(steeper ⇒ G_k falls faster than k^(-1/2))",
        )  # fmt: skip
        ax.set_xlabel("rank k")
        ax.set_ylabel("σ_k/√n (σ_k = √λ_k of the gradient trajectory)" if n else "singular value σ_k = √λ_k")
        ax.set_title(title or "Spectrum of the stored gradients")
        ax.legend(loc="lower left")
        if ranges is not None and len(ranges):
            rows = [f"{'ranks':>9}  {'slope':>6}  95% interval"] + [
                f"{int(r.first):>4}–{int(r.last):<4}  {r.slope:6.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                for r in ranges.itertuples()
            ]
            ax.text(0.98, 0.98, "\n".join(rows), transform=ax.transAxes, ha="right", va="top", family="monospace",
                    fontsize=7, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})  # fmt: skip
    return fig


# ---------------------------------------------------------------------- 2. density
def density(kde: pd.DataFrame | None = None, authors: pd.DataFrame | None = None, *, data_range=None, title="",
            axes=None):  # fmt: skip
    """Two presentations of the spectral density, side by side (one panel each that is given).

    authors : the analyse stage's density_paper.csv (``value``, ``density``): linear-space Gaussian KDE
        of the top-500 singular values with the authors' settings, log–log, y from 1e-10 to 2e2
    kde : density_kde.csv (``eigenvalue``, ``density``, ``bandwidth``): our KDE of log10 λ over all
        computed eigenvalues; ``data_range`` (smallest, largest eigenvalue) clips its x-axis to the data
    axes : one axes per panel given (authors first)
    """
    panels = [p for p, there in (("authors", authors is not None), ("ours", kde is not None)) if there]
    if not panels:
        raise ValueError("nothing to draw: pass kde, authors or both")
    with style(**{"figure.figsize": (5.0 * len(panels), 4.0)}):
        fig, axs = canvas(axes, len(panels))
        for ax, panel in zip(axs, panels):
            if panel == "authors":
                ax.loglog(authors.value, authors.density, color=COLORS[0], label="bandwidth σ = 0.00100 (theirs)")
                ax.set_ylim(1e-10, 2e2)
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a narrow range: labels collide
                ax.set_xlabel("singular value σ_k = λ(HᵀH)^(1/2)")
                ax.set_ylabel("density of KDE")
                ax.set_title("authors' presentation: top-500 σ_k, linear-space KDE", fontsize=10)
                ax.legend(loc="lower left")
                ax.text(
                    0.02, 0.14,
                    "their kernel's absolute std (1e-3) was chosen\nfor their σ_k scale, not for these values",
                    transform=ax.transAxes, fontsize=7, color="0.35", va="bottom",
                )  # fmt: skip
            else:
                keep = kde.density > kde.density.max() * 1e-6
                bw = f", bandwidth {kde.bandwidth.iloc[0]:.3f} in log10 λ" if "bandwidth" in kde else ""
                ax.loglog(kde.eigenvalue[keep], kde.density[keep], color=COLORS[1], label=f"{len(kde)}-point grid{bw}")
                ax.set_xlabel("eigenvalue λ of HᵀH")
                ax.set_ylabel("density (per decade of λ)")
                ax.set_title("ours: KDE of log10 λ over all computed eigenvalues", fontsize=10)
                if data_range is not None and 0 < data_range[0] < data_range[1]:
                    ax.set_xlim(data_range[0], data_range[1])
                ax.legend(loc="lower left")
        if axes is None:
            fig.suptitle(title or "Spectral density of the gradient trajectory")
    return fig


# ---------------------------------------------------------------------- 3. RLC curve
def rlc(curves, fits: dict | None = None, *, column="rms", fitted_to=None, title="", ax=None):
    """G_k vs k (log–log) for each named curve: the ``column`` over steps (solid, with its fit in the
    label) and the max (dashed: the verdict's statistic), G_0 (k = 0) as a star at the left edge,
    k^{-1/2} for reference. ``fitted_to``: {label: last k fitted}; the part of a curve past it (the
    in-sample curve's k > n/2, bent by finite n) is drawn faint and marked as not fitted.

    curves : {label: DataFrame with ``k``, ``column`` (and ``max``)}, or one such DataFrame
        (:meth:`spectral.api.Run.rlc`); fits : {label: fits.rlc_fit}
    """
    curves = {"held-out": curves} if isinstance(curves, pd.DataFrame) else curves
    fits, fitted_to = fits or {}, fitted_to or {}
    with style():
        fig, (ax,) = canvas(ax)
        anchor, left, floor = None, 0.6, np.inf  # G_0 is drawn at k = 0.6, left of k = 1 on the log axis
        for i, (label, curve) in enumerate(curves.items()):
            c = curve[curve.k >= 1]
            last = fitted_to.get(label, c.k.max())
            kept, past = c[c.k <= last], c[c.k >= last]
            text = label
            if label in fits:
                f = fits[label]
                text += f": c = {f['c']:.3f} [{f['c_low']:.3f}, {f['c_high']:.3f}] ({f['verdict']})"
            ax.loglog(kept.k, kept[column], marker=MARKERS[i], ms=3.0, color=COLORS[i], label=text)
            if len(past) > 1:
                ax.loglog(past.k, past[column], color=COLORS[i], alpha=0.3, lw=1.0)
                ax.axvspan(last, past.k.max(), color=COLORS[i], alpha=0.06, lw=0)
                ax.text(last * 1.05, 0.03, f"{label}: k > {last} not fitted\n(finite n bends it)",
                        transform=ax.get_xaxis_transform(), fontsize=7, color=COLORS[i])  # fmt: skip
            if "max" in c:
                ax.loglog(kept.k, kept["max"], "--", color=COLORS[i], lw=0.9, label=f"{label}: max over steps")
            floor = min(floor, float(kept[column].min()))
            zero = curve[curve.k == 0]
            if len(zero):
                ax.plot([left], [float(zero[column].iloc[0])], marker="*", ms=9, color=COLORS[i], ls="none",
                        label=f"{label}: G_0 = {float(zero[column].iloc[0]):.3g} (k = 0)")  # fmt: skip
            anchor = anchor or (float(c.k.iloc[0]), float(c[column].iloc[0]))
        if anchor:
            k = np.logspace(0, np.log10(max(float(cv.k.max()) for cv in curves.values())), 50)
            ax.loglog(k, anchor[1] * (k / anchor[0]) ** -0.5, ":", color="0.4",
                      label="k^(-1/2): boundary of dimension-freedom")  # fmt: skip
        ax.set_xlim(left=0.45)
        if np.isfinite(floor):  # the collapse of an in-sample curve at k = n (1e-10) would flatten the rest
            ax.set_ylim(bottom=floor / 3)
        ax.set_xlabel("subspace dimension k (★: k = 0)")
        ax.set_ylabel(f"G_k = {column} over steps of ‖(I − P_k) g‖")
        ax.set_title(title or "Restricted-Lipschitz curve")
        ax.legend(loc="lower left", fontsize=7)
    return fig


# ---------------------------------------------------------------------- 4. dimension factor
def dimension(frames, *, d_run=None, g0_label="", title="", ax=None):
    """The bound's dimension factor vs d from each measured G_k curve, against the same formula with
    G_k ≡ G_0 (no decay) and the classical G_0 √d (log–log). Dotted: G_k extrapolated beyond the
    measured k (at most as far as the frames reach, see fits.dimension_curve).

    frames : {label: fits.dimension_curve frame (d, rlc_factor, no_decay_factor, classical_factor,
        measured)}, or one such frame
    """
    frames = {"G_k": frames} if isinstance(frames, pd.DataFrame) else frames
    with style():
        fig, (ax,) = canvas(ax)
        for i, (label, f) in enumerate(frames.items()):
            ax.loglog(f.d[f.measured], f.rlc_factor[f.measured], color=COLORS[i], label=f"G_k {label}")
            joined = int(np.flatnonzero(f.measured.to_numpy()).max(initial=0))  # the dotted part joins the solid
            ax.loglog(f.d.iloc[joined:], f.rlc_factor.iloc[joined:], ":", color=COLORS[i])
            # its own baseline: the curves' G_0 differ (held-out vs in-sample), so each compares with its own
            ax.loglog(f.d, f.no_decay_factor, "--", color=COLORS[i], lw=0.9, label=f"{label}, no decay (G_k = G_0)")
        widest = max(frames.values(), key=len)
        ax.loglog(widest.d, widest.classical_factor, "-.", color="0.6", lw=1.0, label="G_0 √d (constants omitted)")
        if d_run and d_run <= widest.d.max():
            ax.axvline(d_run, color="0.5", lw=0.8)
            ax.annotate(f"this run: d = {d_run:,}", (d_run, ax.get_ylim()[0]), xytext=(4, 6),
                        textcoords="offset points", fontsize=8, color="0.3", rotation=90, ha="left",
                        va="bottom")  # fmt: skip
        elif d_run:
            ax.text(0.98, 0.02, f"this run's d = {d_run:,}: beyond a decade past the measured k",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")  # fmt: skip
        ax.set_xlabel("dimension d")
        ax.set_ylabel("dimension factor G_0 + Σ_s 2^(s/2) G_(2^(s−1))")
        ax.set_title(title or "Dimension factor of the bound from the measured G_k")
        handles, _ = ax.get_legend_handles_labels()
        dotted = matplotlib.lines.Line2D(
            [], [], color="0.4", ls=":", label="G_k extrapolated (≤ 1 decade past measured k)"
        )
        ax.legend(handles=handles + [dotted], loc="upper left", title=g0_label or None)
    return fig


# ---------------------------------------------------------------------- 5. retraining
# line style by where the subspace comes from; colour by variant (each its own)
SOURCE_STYLES = {"trajectory": "-", "public": "-", "random": "--", "span-random": (0, (5, 1.5, 1, 1.5)),
                 "complement": ":"}  # fmt: skip
# other runs' subspaces, one pattern each (dash-dot-dot, dense dots, long dashes, ...)
OTHER_RUN_STYLES = ((0, (4, 1.5, 1, 1.5, 1, 1.5)), (0, (1, 1)), (0, (6, 2)), (0, (3, 3)))


def _panel(setting: str) -> str:
    """The panel a setting is drawn in: the controls (random subspace, another run's subspace) beside the
    trajectory's own top-r runs, e.g. ``signal-random`` -> ``signal-trajectory``."""
    parts = setting.split("-")
    if len(parts) < 2 or parts[1] == "public":
        return setting
    return "-".join([parts[0], "trajectory", *parts[2:]])


def _panel_title(panel: str, controls: bool = False) -> str:
    """``signal-public-nonprivate`` -> ``non-private, signal mode: public subspace``."""
    parts = panel.split("-")
    if len(parts) < 2:
        return panel
    privacy = "non-private" if "nonprivate" in parts[2:] else "DP"
    source = "public subspace" if parts[1] == "public" else "the run's subspace" + (" and controls" if controls else "")
    return f"{privacy}, {parts[0]} mode: {source}"


def _variant_style(variant: str, rank: int, source: str, variants: list, other_runs: list) -> dict:
    """Black: unrestricted; grey: rank 0; every other variant its own colour (``variants``: their order)
    and the line style of its subspace's source, each of ``other_runs`` (other runs' subspaces) its own."""
    if variant == "full":
        return {"color": "black", "ls": "-"}
    if rank == 0:
        return {"color": "0.55", "ls": "-."}
    palette = [c for i, c in enumerate(COLORS) if i != 7]  # tab10's grey is rank 0's
    ls = SOURCE_STYLES.get(source) or OTHER_RUN_STYLES[other_runs.index(source) % len(OTHER_RUN_STYLES)]
    return {"color": palette[variants.index(variant) % len(palette)], "ls": ls}


def retrain_panels(history: pd.DataFrame, metric: str = "accuracy"):
    """``(history with setting/rank/subspace_from/panel columns, per-step mean/std/count over seeds)``."""
    history = history if "setting" in history else history.assign(setting="")
    if "rank" not in history:
        history = history.assign(rank=history.variant.str.extract(r"(\d+)")[0].fillna(0).astype(int))
    if "subspace_from" not in history:
        history = history.assign(subspace_from="trajectory")
    history = history.assign(panel=history.setting.map(_panel))
    stats = (
        history.groupby(["panel", "setting", "variant", "step"], sort=False)[metric]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    stats["std"] = stats["std"].fillna(0.0)
    return history, stats


def retrain(history: pd.DataFrame, *, metric="accuracy", majority=None, title="", axes=None):
    """Accuracy vs step per variant: every seed's curve (thin) and their mean with its ± 1 std band over
    seeds; one panel per setting, the controls (rank 0, a random subspace, another run's subspace) in
    the panel of the trajectory's own subspace; colour = rank, line style = the subspace's source. The
    y-axis spans the data; the accuracy of always predicting the majority class (``majority``) is drawn
    when it lies near that span and given in the legend otherwise.

    history : columns ``setting`` (optional), ``variant`` ("rank 10", "random 10", …, "full"), ``seed``,
        ``step``, ``metric`` and optionally ``rank``, ``subspace_from``
    axes : one axes per setting's panel (None: a grid of them)
    """
    history, stats = retrain_panels(history, metric)
    panels = list(dict.fromkeys(stats.panel))
    variants = list(dict.fromkeys(v for v, r in zip(history.variant, history["rank"]) if v != "full" and r > 0))
    other_runs = sorted({str(x) for x in history.subspace_from} - set(SOURCE_STYLES))
    low, high = history[metric].min(), history[metric].max()
    pad = 0.06 * max(high - low, 1e-3)
    show_majority = majority is not None and majority >= low - 4 * pad
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    with style(**{"figure.figsize": (7.6 * cols + 0.6, 4.0 * rows + 0.4)}):
        if axes is None:
            fig, grid = new_figure(rows, cols, sharey=True, squeeze=False)
            for ax in grid.flat[len(panels) :]:
                ax.set_visible(False)
            axs, first_column = list(grid.flat), [row[0] for row in grid]
        else:
            fig, axs = canvas(axes, len(panels))
            first_column = axs
        for ax, panel in zip(axs, panels):
            in_panel = history[history.panel == panel]
            for variant, runs in in_panel.groupby("variant", sort=False):
                first = runs.iloc[0]
                look = _variant_style(variant, int(first["rank"]), str(first.subspace_from), variants, other_runs)
                g = stats[(stats.panel == panel) & (stats.variant == variant)]
                for _, run in runs.groupby("seed"):  # every seed, not only a band over few of them
                    ax.plot(run.step, run[metric], color=look["color"], ls=look["ls"], lw=0.6, alpha=0.35)
                seeds = runs.seed.nunique()
                if seeds > 1:
                    ax.fill_between(g.step, g["mean"] - g["std"], g["mean"] + g["std"], color=look["color"], alpha=0.1)
                ax.plot(g.step, g["mean"], lw=1.6, **look, label=f"{variant} ({seeds} seed{'s' * (seeds > 1)})")
            if show_majority:
                ax.axhline(majority, color="0.5", ls=(0, (1, 3)), lw=0.9, label=f"majority class ({majority:.3f})")
            ax.set_xlabel("training step")
            noise_only = (in_panel["rank"] == 0) & (in_panel.variant != "full")
            controls = bool(((in_panel.subspace_from != "trajectory") | noise_only).any())
            ax.set_title(_panel_title(panel, controls), fontsize=10)
            legend_title = None if show_majority or majority is None else f"majority class: {majority:.3f} (below)"
            # beside the panel, off the curves
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title=legend_title, fontsize="small")
            ax.set_ylim((min(low, majority) if show_majority else low) - pad, high + pad)
        for ax in first_column:
            ax.set_ylabel(f"dev {metric}\n(thin: each seed; line ± band: mean ± std)")
        if axes is None:
            fig.suptitle(title or "Retraining with updates restricted to an r-dimensional subspace")
    return fig


# ---------------------------------------------------------------------- 7. batch-size predictions
def batch(panels: dict, fits_by_label: dict, *, title="", axes=None):
    """Measured and predicted trajectories on the same axes: σ_k/√n against k (left) and the held-out
    G_k (rms, right), one line per ``panels`` entry ``{label: {"spectrum": DataFrame, "held_out":
    DataFrame | None, "n": int}}``; the legend gives each slope and c (rms) from ``fits_by_label``."""
    with style(**{"figure.figsize": (11.0, 4.2)}):
        fig, (left, right) = canvas(axes, 2)
        for i, (label, p) in enumerate(panels.items()):
            f = fits_by_label[label]
            ls = "-" if label.startswith("measured") else "--"
            sp = p["spectrum"]
            keep = sp.eigenvalue > 0
            slope = f"slope {f['slope']:.3f}" if f.get("slope") is not None else "no fit"
            left.loglog(sp["rank"][keep], np.sqrt(sp.eigenvalue[keep] / p["n"]), ls, color=COLORS[i % 10],
                        label=f"{label}: {slope}")  # fmt: skip
            if p.get("held_out") is not None:
                h = p["held_out"][p["held_out"].k >= 1]
                c = f"c {f['c_rms']:.3f}" if f.get("c_rms") is not None else ""
                right.loglog(h.k, h["rms"], ls, color=COLORS[i % 10], label=f"{label}: {c}")
        left.set_xlabel("rank k")
        left.set_ylabel("σ_k / √n")
        left.set_title("spectrum: measured (solid), predicted (dashed)")
        right.set_xlabel("k")
        right.set_ylabel("held-out G_k (rms over steps)")
        right.set_title("held-out G_k, components from the other steps")
        for ax in (left, right):
            ax.legend(loc="lower left", fontsize=7.5)
        if axes is None:
            fig.suptitle(title or "The same steps at other batch sizes (from the sampling stream)")
    return fig


# ---------------------------------------------------------------------- 8. groups
def groups(eigenvalues: pd.DataFrame, table: pd.DataFrame, *, n=None, axes=None):
    """Left: σ_k/√n of each group (log–log). Right: each group's share of the energy and its top-10 share.
    ``eigenvalues``: group, rank, eigenvalue (:meth:`spectral.api.Run.groups`); ``table``: one row per
    group with ``group``, ``energy_share``, ``top10_energy`` (:func:`spectral.report.run.group_fits`)."""
    scale = 1 / np.sqrt(n) if n else 1.0
    with style(**{"figure.figsize": (11.0, 4.4)}):
        fig, (a, b) = canvas(axes, 2)
        names = list(table.group)
        for i, name in enumerate(names):
            g = eigenvalues[eigenvalues.group == name].sort_values("rank")
            short = name.split("encoder.")[-1]
            a.loglog(g["rank"], np.sqrt(g.eigenvalue) * scale, color=COLORS[i % 10], lw=1.1,
                     ls="-" if i < 10 else "--", label=short)  # fmt: skip
        a.set_xlabel("rank k")
        a.set_ylabel("σ_k/√n of the group's rows" if n else "σ_k")
        a.set_title("Spectrum per group")
        a.legend(fontsize=6, ncol=2, loc="lower left")
        y = np.arange(len(names))
        b.barh(y - 0.2, table.energy_share, height=0.4, color=COLORS[0], label="share of the trajectory's energy")
        b.barh(y + 0.2, table.top10_energy, height=0.4, color=COLORS[3], label="top-10 share of the group's energy")
        b.set_yticks(y, [nm.split("encoder.")[-1] for nm in names], fontsize=6)
        b.invert_yaxis()
        b.set_xlim(0, 1)
        b.set_title("Where the energy sits")
        b.legend(fontsize=7, loc="upper right")
    return fig
