"""The ends of every range, and the authors' density against their algorithm written out.

Oracles are written here independently: closed-form least squares, explicit loops, set algebra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spectral.analyse import rlc
from spectral.analyse.density import AUTHORS_KDE, eigenvalue_kde, linear_kde
from spectral.errors import SpectralError
from spectral.report import fits


def closed_form_ols(x, y):
    """Slope and intercept of log y on log x by the normal equations."""
    X = np.c_[np.ones(len(x)), np.log(x)]
    intercept, slope = np.linalg.solve(X.T @ X, X.T @ np.log(y))
    return slope, intercept


# ---------------------------------------------------------------------- k grids
@pytest.mark.parametrize("k_max", [1, 2, 7, 30, 31, 1000])
def test_k_grid_starts_at_0_and_1_and_ends_at_k_never_past_it(k_max):
    ks = rlc.k_grid(k_max)
    assert ks[0] == 0 and ks[1] == 1 and ks[-1] == k_max
    assert np.all(np.diff(ks) > 0) and ks.max() <= k_max


def test_residual_norms_at_the_ends_of_the_grid():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((5, 4))
    sq = (scores**2).sum(1) + 1.0  # each row has energy 1 outside the 4 components
    G = rlc.residual_norms(scores, sq, [0, 1, 4])
    np.testing.assert_allclose(G[0], np.sqrt(sq))  # k = 0: the whole norm
    np.testing.assert_allclose(G[1], np.sqrt(sq - scores[:, 0] ** 2))  # k = 1: the first component only
    np.testing.assert_allclose(G[4], 1.0)  # k = k_max: the energy outside them all
    with pytest.raises(Exception, match="k values must lie"):
        rlc.residual_norms(scores, sq, [5])


# ---------------------------------------------------------------------- splits
@pytest.mark.parametrize("n", [2, 3, 10, 11])
@pytest.mark.parametrize("split", ["half", "alternate"])
def test_splits_are_disjoint_covering_and_put_the_boundary_where_they_say(n, split):
    fit, test = rlc.split_rows(n, split)
    assert set(fit).isdisjoint(test) and sorted([*fit, *test]) == list(range(n))
    if split == "half":
        assert list(fit) == list(range(n // 2)) and list(test) == list(range(n // 2, n))
    else:
        assert list(fit) == list(range(0, n, 2)) and list(test) == list(range(1, n, 2))


# ---------------------------------------------------------------------- fit ranges, intercepts
def test_spectrum_fit_uses_first_and_last_rank_inclusive_with_the_closed_form_slope_and_intercept():
    k = np.arange(1, 41)
    sv = 3.0 * k**-0.7 * np.exp(0.05 * np.sin(k))  # not a pure power law
    fit = fits.spectrum_fit(sv, (5, 20))
    slope, intercept = closed_form_ols(k[4:20], sv[4:20])
    assert fit["range"] == [5, 20] and fit["points"] == 16
    assert fit["slope"] == pytest.approx(slope, rel=1e-12)
    assert fit["intercept"] == pytest.approx(intercept, rel=1e-12)
    clipped = fits.spectrum_fit(sv, (1, 500))  # beyond the available ranks: clipped, and says so
    assert clipped["range"] == [1, 40] and clipped["points"] == 40


def test_rlc_fit_starts_at_k_1_and_reports_g0_fit_from_the_intercept():
    k = np.array([0, 1, 2, 4, 8, 16, 32])
    rms = np.r_[5.0, 2.0 * k[1:] ** -0.3 * (1 + 0.02 * np.cos(k[1:]))]
    curve = pd.DataFrame({"k": k, "rms": rms})
    fit = fits.rlc_fit(curve)
    slope, intercept = closed_form_ols(k[1:], rms[1:])
    assert fit["points"] == 6 and fit["k_range"] == [1, 32]
    assert fit["c"] == pytest.approx(-slope, rel=1e-12)
    assert fit["g0_fit"] == pytest.approx(np.exp(intercept), rel=1e-12)
    assert fit["g0"] == 5.0  # the measured k = 0 row, not the fit
    ranged = fits.rlc_fit(curve, k_range=(2, 16))
    assert ranged["k_range"] == [2, 16] and ranged["points"] == 4


# ---------------------------------------------------------------------- the authors' density
def authors_eigv_to_density(values, variance, grid_len, grid_expand):
    """spectral_analysis/density.py's algorithm as a plain loop: a grid from min − expand to max + expand,
    one Gaussian of variance ``variance · max(1, range)`` per value, normalised to unit area."""
    lo, hi = min(values) - grid_expand, max(values) + grid_expand
    grid = [lo + i * (hi - lo) / (grid_len - 1) for i in range(grid_len)]
    var = variance * max(1.0, hi - lo)
    dens = []
    for x in grid:
        dens.append(sum(np.exp(-((x - v) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var) for v in values) / len(values))
    step = grid[1] - grid[0]
    area = sum(dens) * step
    return np.array(grid), np.array(dens) / area


@pytest.mark.parametrize("values", [[0.3, 0.31, 0.5], [1.0, 2.5, 4.0, 4.2]])  # ranges below and above 1
def test_linear_kde_is_the_authors_algorithm(values):
    got = linear_kde(values, variance=1e-3, grid_len=400, grid_expand=0.05)
    grid, dens = authors_eigv_to_density(values, 1e-3, 400, 0.05)
    np.testing.assert_allclose(got["value"], grid, rtol=1e-12)
    assert got["value"].iloc[0] == pytest.approx(min(values) - 0.05) and got["value"].iloc[-1] == pytest.approx(
        max(values) + 0.05
    )
    np.testing.assert_allclose(got["density"], dens, rtol=1e-9)
    assert (got["density"].sum() * (grid[1] - grid[0])) == pytest.approx(1.0)


def test_the_authors_settings_are_theirs():
    assert AUTHORS_KDE == {"top": 500, "variance": 1e-6, "grid_len": 300_000, "grid_expand": 3e-4}


def test_spectrum_fit_passes_its_options_on_and_says_what_it_implies():
    k = np.arange(1, 61)
    steep = 2.0 * k**-0.9 * (1 + 0.05 * np.cos(k))
    wide, narrow = fits.spectrum_fit(steep, (1, 60)), fits.spectrum_fit(steep, (1, 60), confidence=0.5)
    assert narrow["confidence"] == 0.5 and (narrow["ci_high"] - narrow["ci_low"]) < (wide["ci_high"] - wide["ci_low"])
    assert wide["c_implied"] == pytest.approx(-wide["slope"] - 0.5, rel=1e-12)  # c = a − 1/2 for a > 1/2
    from spectral import theory

    # slopes whose implied c = a - 1/2 lies in each regime: 0.4 (polynomial), 0.8 (dimension-free)
    for fit in (wide, fits.spectrum_fit(2.0 * k**-1.3 * (1 + 0.05 * np.cos(k)), (1, 60))):
        a, a_low, a_high = -fit["slope"], -fit["ci_high"], -fit["ci_low"]
        assert fit["verdict"] == theory.regime(a - 0.5).name
        assert fit["verdict_interval"] == theory.regime_interval(a_low - 0.5, a_high - 0.5)
    assert fit["verdict"] == "dimension-free" and fit["c_implied"] == pytest.approx(a - 0.5, rel=1e-12)
    flat = fits.spectrum_fit(2.0 * k**-0.3, (1, 60))
    assert flat["c_implied"] is None and flat["verdict"].startswith("not applicable")
    assert flat["verdict_interval"].startswith("not applicable")
    with pytest.raises(Exception, match=r"fit range \(5, 5\) does not fit 60 singular values"):
        fits.spectrum_fit(steep, (5, 5))


def test_spectrum_fit_at_a_half_exactly_does_not_apply(monkeypatch):
    """a = 1/2 is the edge the docstring excludes ("with a <= 1/2 the link does not apply"), for the
    point estimate and for the interval's lower end alike."""
    k = np.arange(1, 11)
    edge = {"slope": -0.5, "ci_low": -0.8, "ci_high": -0.5}
    monkeypatch.setattr(fits, "log_log_fit", lambda x, y, **kw: dict(edge))
    got = fits.spectrum_fit(k**-0.5, (1, 10))
    assert got["c_implied"] is None and got["verdict"].startswith("not applicable")
    assert got["verdict_interval"].startswith("not applicable")


def test_densities_say_how_many_values_they_need():
    with pytest.raises(SpectralError, match=r"^a density needs at least two positive eigenvalues$"):
        eigenvalue_kde([3.0, 0.0, -1.0])
    assert len(eigenvalue_kde([3.0, 0.0, 1.0], points=7)) == 7
    with pytest.raises(SpectralError, match=r"^a density needs at least one value$"):
        linear_kde([])


def test_log_log_fit_drops_points_it_cannot_take_the_log_of():
    """k = 0 (G_0 on an RLC curve), zero, negative and non-finite values are left out, not fitted."""
    x = np.arange(1, 21, dtype=float)
    y = 2.0 * x**-0.7 * np.exp(0.05 * np.cos(x))
    ref = fits.log_log_fit(x, y)
    bad_x, bad_y = [0.0, -1.0, np.inf, 3.0, 4.0, np.nan], [1.0, 1.0, 1.0, 0.0, np.inf, 1.0]
    got = fits.log_log_fit(np.r_[bad_x, x], np.r_[bad_y, y])
    assert got == ref and got["points"] == 20


def test_log_log_fit_intervals_against_their_definitions():
    """The t interval from the closed-form standard error, and the bootstrap interval as a loop of
    per-resample least squares over the same resampled indices (seeded)."""
    from scipy import stats

    x = np.arange(1, 31, dtype=float)
    y = 3.0 * x**-0.6 * np.exp(0.1 * np.sin(3 * x))
    fit = fits.log_log_fit(x, y, confidence=0.9, bootstrap=300, seed=4)
    lx, ly = np.log(x), np.log(y)
    slope, intercept = closed_form_ols(x, y)
    resid = ly - (intercept + slope * lx)
    se = np.sqrt(resid @ resid / (len(x) - 2) / ((lx - lx.mean()) ** 2).sum())
    t = stats.t.ppf(0.95, len(x) - 2)
    assert fit["stderr"] == pytest.approx(se, rel=1e-9) and fit["points"] == 30
    assert fit["ci_low"] == pytest.approx(slope - t * se, rel=1e-9) and fit["ci_high"] == pytest.approx(
        slope + t * se, rel=1e-9
    )
    assert fit["r2"] == pytest.approx(1 - resid @ resid / ((ly - ly.mean()) ** 2).sum(), rel=1e-9)
    idx = np.random.default_rng(4).integers(0, 30, size=(300, 30))
    boot = [np.polyfit(lx[i], ly[i], 1)[0] for i in idx]
    lo, hi = np.quantile(boot, [0.05, 0.95])
    assert fit["boot_low"] == pytest.approx(lo, rel=1e-9) and fit["boot_high"] == pytest.approx(hi, rel=1e-9)
    assert "boot_low" not in fits.log_log_fit(x, y, bootstrap=0)
    three = fits.log_log_fit([1.0, 2.0, 4.0, 8.0], [1.0, 0.5, 0.0, 0.25], bootstrap=0)  # a zero is left out
    expected_slope, _ = closed_form_ols(np.array([1.0, 2.0, 8.0]), np.array([1.0, 0.5, 0.25]))
    assert three["points"] == 3 and three["slope"] == pytest.approx(expected_slope, rel=1e-12)
    with pytest.raises(Exception, match="at least 3 positive points"):
        fits.log_log_fit([1, 2, 3], [1.0, 0.0, -1.0])


def test_the_authors_density_takes_the_largest_500_with_their_settings():
    from spectral.analyse import density

    values = np.random.default_rng(4).lognormal(-3, 1, 620)  # more than 500: which 500 matters
    got = density.authors_density(values, thin=30)
    top = np.sort(values)[::-1][:500]
    lo, hi = top.min() - 3e-4, top.max() + 3e-4  # the authors' grid_expand
    grid = np.linspace(lo, hi, 300_000)  # their grid length
    assert list(got.columns) == ["value", "density"] and len(got) == 10_000  # every 30th of 300,000
    assert len(density.authors_density(values)) == 10_000  # 30 by default
    np.testing.assert_allclose(got.value, grid[::30], rtol=1e-12)
    var = 1e-6 * max(1.0, hi - lo)  # their kernel variance rule
    idx = [0, 4321, 9999]
    raw = np.exp(-((grid[:, None] - top) ** 2) / (2 * var)).sum(1)
    expected = raw / (raw.sum() * (grid[1] - grid[0]))
    np.testing.assert_allclose(got.density.iloc[idx], expected[::30][idx], rtol=1e-9)
    defaults = density.linear_kde(top[:5])  # the signature's defaults are the authors' constants
    explicit = density.linear_kde(top[:5], variance=1e-6, grid_len=300_000, grid_expand=3e-4)
    pd.testing.assert_frame_equal(defaults, explicit)


def test_density_edges_one_value_zeros_and_bandwidth():
    from scipy.stats import gaussian_kde

    from spectral.analyse import density
    from spectral.errors import SpectralError

    one = density.linear_kde([0.5], variance=1e-3, grid_len=50_001, grid_expand=0.1)  # one value; > 20k points
    dx = one.value[1] - one.value[0]
    assert one.density.sum() * dx == pytest.approx(1.0, rel=1e-9)
    assert one.value.iloc[one.density.idxmax()] == pytest.approx(0.5, abs=dx)  # peak at the value
    with pytest.raises(SpectralError, match="at least one value"):
        density.linear_kde([])
    lam = np.array([1e-4, 3e-3, 0.02, 0.5])
    base = density.eigenvalue_kde(lam)
    logs = np.log10(lam)
    pad = 3 * base.bandwidth.iloc[0] * logs.std() / logs.std(ddof=1)  # the grid reaches 3 kernel widths past the data
    assert len(base) == 200
    np.testing.assert_allclose(
        np.log10(base.eigenvalue.iloc[[0, -1]]), [logs.min() - pad, logs.max() + pad], rtol=1e-12
    )
    pd.testing.assert_frame_equal(density.eigenvalue_kde(np.r_[lam, 0.0, -1e-9]), base)  # non-positive: left out
    two = density.eigenvalue_kde(lam[:2], points=7)  # two positive eigenvalues are enough
    assert len(two) == 7 and np.isfinite(two.density).all()
    with pytest.raises(SpectralError, match="at least two positive eigenvalues"):
        density.eigenvalue_kde([0.3, 0.0])
    wide = density.eigenvalue_kde(lam, points=9, bandwidth=0.5)
    logs = np.log10(lam)
    ref = gaussian_kde(logs, bw_method=0.5)
    assert wide.bandwidth.iloc[0] == pytest.approx(0.5 * logs.std(ddof=1), rel=1e-12)
    np.testing.assert_allclose(wide.density, ref(np.log10(wide.eigenvalue)), rtol=1e-9)
