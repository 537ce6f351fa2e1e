"""Fits of the report stage: the spectrum's power law, the restricted-Lipschitz exponent, and what
they imply for dimension independence. Every fit is a plain dict (JSON-ready); tables are DataFrames.

Power law of the spectrum: log σ_k = intercept + slope · log k by OLS (as the seed code's
``scipy.stats.linregress``). Two intervals for the slope are given: the analytic t-interval from the
OLS standard error and a bootstrap over (k, σ_k) pairs. Both assume independent residuals, which
consecutive eigenvalues are not, so both are optimistic; the range table (slope over several rank
ranges) is the better check of how much the number depends on choices.

RLC exponent: G_k ≈ G_0 k^{-c} fitted the same way on the analyse stage's G_k curve (k >= 1), with
the theory's verdict (spectral.theory.regime). The link to the spectrum: σ_j ∝ j^{-a} gives
G_k ∝ k^{1/2−a}, so c = a − 1/2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .. import theory
from ..errors import SpectralError

DEFAULT_RANGES = ((1, 10), (1, 50), (1, 100), (1, 500), (10, 100), (10, 500), (50, 500))


def log_log_fit(x, y, *, confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """OLS of log y on log x: slope, intercept, r2, stderr, analytic and bootstrap intervals."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    m = len(lx)
    if m < 3:
        raise SpectralError(f"a power-law fit needs at least 3 positive points, got {m}")
    r = stats.linregress(lx, ly)
    t = stats.t.ppf(0.5 + confidence / 2, m - 2)
    out = {
        "slope": float(r.slope),
        "intercept": float(r.intercept),
        "r2": float(r.rvalue**2),
        "stderr": float(r.stderr),
        "points": m,
        "confidence": confidence,
        "ci_low": float(r.slope - t * r.stderr),
        "ci_high": float(r.slope + t * r.stderr),
    }
    if bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, m, size=(bootstrap, m))
        X, Y = lx[idx], ly[idx]
        Xc = X - X.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            slopes = (Xc * (Y - Y.mean(1, keepdims=True))).sum(1) / (Xc**2).sum(1)
        slopes = slopes[np.isfinite(slopes)]
        lo, hi = np.quantile(slopes, [0.5 - confidence / 2, 0.5 + confidence / 2])
        out.update(boot_low=float(lo), boot_high=float(hi))
    return out


def spectrum_fit(singular_values, fit_range=(1, 500), **kw) -> dict:
    """Power law of σ_k (k = 1, 2, …) over ranks fit_range = (first, last), inclusive.

    The range is clipped to the ranks available; ``range`` in the result says which were used.
    Adds ``c_implied``, the RLC exponent this spectrum implies under the toolkit's reading of the
    theory: if σ_j ∝ j^{-a} with a > 1/2 and the power law continues, G_k² ∝ Σ_{j>k} σ_j² ∝ k^{1−2a},
    so c = a − 1/2. With a ≤ 1/2 that tail sum is set by where the spectrum ends, not by k, and
    the link does not apply: ``c_implied`` is None and the verdict "not applicable".
    """
    s = np.asarray(singular_values, dtype=float)
    first, last = int(fit_range[0]), min(int(fit_range[1]), len(s))
    if not 1 <= first < last:
        raise SpectralError(f"fit range {tuple(fit_range)} does not fit {len(s)} singular values")
    k = np.arange(first, last + 1)
    fit = log_log_fit(k, s[first - 1 : last], **kw)
    a, a_low, a_high = -fit["slope"], -fit["ci_high"], -fit["ci_low"]
    applicable = a > 0.5
    na = "not applicable (σ_k falls slower than k^-1/2)"
    return {
        **fit,
        "range": [first, last],
        "c_implied": a - 0.5 if applicable else None,
        "verdict": theory.regime(a - 0.5).name if applicable else na,
        "verdict_interval": theory.regime_interval(a_low - 0.5, a_high - 0.5) if a_low > 0.5 else na,
    }


# The bound asks ‖(I − P_k)∇h(x)‖ <= G_k of every gradient: the worst case over stored steps.
VERDICT_STATISTIC = "max"


def rlc_statistics(curve: pd.DataFrame, statistics=("rms", "q90", "max"), **kw) -> dict:
    """The G_k exponent of several summaries over steps (rms, 90th percentile, max), and the verdict
    taken from :data:`VERDICT_STATISTIC` (the max: the theory bounds every gradient, not their mean)."""
    out = {stat: rlc_fit(curve, column=stat, **kw) for stat in statistics if stat in curve}
    basis = out.get(VERDICT_STATISTIC) or next(iter(out.values()))
    return {**out, "verdict_basis": basis["statistic"], "verdict": basis["verdict"], "growth": basis["growth"]}


def range_table(singular_values, ranges=DEFAULT_RANGES, **kw) -> pd.DataFrame:
    """Slope, interval and R² for several rank ranges (those that fit the available ranks)."""
    rows = []
    for first, last in ranges:
        if last <= len(singular_values) and first < last:
            f = spectrum_fit(singular_values, (first, last), **kw)
            rows.append(
                {
                    "first": first,
                    "last": last,
                    **{k: f[k] for k in ("slope", "ci_low", "ci_high", "r2", "c_implied", "verdict")},
                }
            )
    return pd.DataFrame(rows)


def rlc_fit(curve: pd.DataFrame, column: str = "rms", k_range=None, **kw) -> dict:
    """G_k ≈ G_0 k^{-c} on an analyse-stage curve (columns ``k`` and ``column``), k >= 1.

    Returns c with its intervals (c = −slope), G_0 (the k = 0 row when present), and the verdict.
    """
    if "k" not in curve or column not in curve:
        raise SpectralError(f"a G_k curve needs columns 'k' and {column!r}")
    sel = curve[curve.k >= 1]
    if k_range is not None:
        sel = sel[(sel.k >= k_range[0]) & (sel.k <= k_range[1])]
    fit = log_log_fit(sel.k.to_numpy(), sel[column].to_numpy(), **kw)
    g0 = curve.loc[curve.k == 0, column]
    out = {
        "c": -fit["slope"],
        "c_low": -fit["ci_high"],
        "c_high": -fit["ci_low"],
        "r2": fit["r2"],
        "points": fit["points"],
        "g0_fit": float(np.exp(fit["intercept"])),
        "g0": float(g0.iloc[0]) if len(g0) else None,
        "k_range": [int(sel.k.min()), int(sel.k.max())],
        "statistic": column,
    }
    if "boot_low" in fit:
        out.update(c_boot_low=-fit["boot_high"], c_boot_high=-fit["boot_low"])
    reg = theory.regime(out["c"])
    out.update(
        verdict=reg.name, growth=reg.growth, verdict_interval=theory.regime_interval(out["c_low"], out["c_high"])
    )
    return out


def dimension_curve(
    curve: pd.DataFrame, column: str = "rms", ds=None, extrapolate: str = "power", g0=None, max_decades: float = 1.0
) -> pd.DataFrame:
    """The bound's dimension factor G_0 + Σ 2^{s/2} G_{2^{s−1}} from a measured G_k curve, against the
    same formula with G_k ≡ G_0 (no decay) and the classical G_0 √d.

    g0 : G_0, the k = 0 term: None for the measured one (the RMS norm of the stored gradients), or a
        number such as the per-example clipping bound C.
    max_decades : how far beyond the largest measured k the curve may be extrapolated (by
        ``extrapolate``, see theory.MeasuredCurve); dimensions needing more are left out (None: no limit).
        The ``measured`` column says whether all G_k a row needs were measured; ``decades_beyond`` how far
        beyond they reach.
    """
    ds = np.unique(np.round(np.logspace(1, 9, 97)).astype(np.int64)) if ds is None else np.asarray(ds)
    k, values = curve.k.to_numpy(), curve[column].to_numpy(dtype=float).copy()
    if g0 is not None:
        if not np.any(k == 0):
            raise SpectralError("setting G_0 needs the curve's k = 0 row")
        values[k == 0] = float(g0)
    G = theory.MeasuredCurve(k, values, extrapolate=extrapolate)
    # the bound reads G at k = 2^{⌈log₂ d⌉ − 1}
    needed = 2.0 ** (np.ceil(np.log2(np.maximum(ds, 2))) - 1)
    beyond = np.maximum(np.log10(needed / k.max()), 0.0)
    if max_decades is not None:
        ds, beyond, needed = ds[beyond <= max_decades], beyond[beyond <= max_decades], needed[beyond <= max_decades]
    frame = theory.dimension_curve(G, ds)
    frame["measured"] = needed <= k.max()
    frame["decades_beyond"] = beyond
    return frame
