"""The RLC bound calculator against closed forms and a direct evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectral import theory
from spectral.errors import SpectralError


def direct_factor(G, d):
    """G_0 + Σ_{s=1}^{⌈log₂ d⌉} 2^{s/2} G_{2^{s−1}} by a plain loop over s."""
    total, s = G[0], 1
    while s <= math.ceil(math.log2(d)):
        total += 2 ** (s / 2) * G[2 ** (s - 1)]
        s += 1
    return total


@pytest.mark.parametrize("d", [1, 2, 3, 17, 1000, 4096])
def test_sum_formula_matches_a_direct_evaluation(d):
    G = np.sort(np.random.default_rng(d).random(5000))[::-1]
    assert theory.dimension_factor(G, d) == pytest.approx(direct_factor(G, d), rel=1e-12)


def test_closed_forms_for_constant_and_inverse_sqrt_decay():
    L = math.ceil(math.log2(10**6))
    # G_k = G_0: a geometric series in √2
    assert theory.dimension_factor(theory.PowerLaw(2.0, 0.0), 10**6) == pytest.approx(
        2.0 * (1 + sum(2 ** (s / 2) for s in range(1, L + 1)))
    )
    # G_k = G_0 k^{-1/2}: every term is √2 G_0, so the factor is G_0 (1 + √2 ⌈log₂ d⌉) — logarithmic
    assert theory.dimension_factor(theory.PowerLaw(1.0, 0.5), 10**6) == pytest.approx(1 + math.sqrt(2) * L)


def test_growth_in_d_follows_the_regime():
    f = lambda c, d: theory.dimension_factor(theory.PowerLaw(1.0, c), d)  # noqa: E731
    # c > 1/2: bounded (the series converges); c < 1/2: ratio over 4x in d tends to 4^{1/2-c}
    r = 2**-0.3  # c = 0.8: terms 2^{s/2} 2^{-0.8(s-1)} = 2^{0.8} r^s form a convergent series
    limit = 1 + 2**0.8 * r / (1 - r)
    assert f(0.8, 2**20) < f(0.8, 2**60) < limit
    assert f(0.8, 2**60) == pytest.approx(limit, rel=1e-4)
    assert f(0.3, 2**42) / f(0.3, 2**40) == pytest.approx(4**0.2, rel=1e-3)
    assert theory.classical_factor(3.0, 10**4) == pytest.approx(300.0)


@pytest.mark.parametrize("c,name", [(0.3, "polynomial"), (0.5, "logarithmic"), (0.8, "dimension-free")])
def test_regime_verdicts(c, name):
    assert theory.regime(c).name == name
    assert theory.regime_interval(c - 0.01, c + 0.01) == name
    assert theory.regime_interval(0.3, 0.8).startswith("undecided")


def test_measured_curve_interpolates_and_extrapolates_a_power_law():
    law = lambda k: 2.0 * np.maximum(np.asarray(k, dtype=float), 1.0) ** -0.7  # noqa: E731
    ks = np.array([0, 1, 2, 4, 8, 16, 32, 64])
    curve = theory.MeasuredCurve(ks, law(ks))
    k = np.array([3, 11, 50, 1000, 10**6])
    np.testing.assert_allclose(curve(k), law(k), rtol=1e-10)  # log-log linear between and beyond
    assert curve.tail_c == pytest.approx(0.7)
    flat = theory.MeasuredCurve(ks, law(ks), extrapolate="flat")
    assert flat(np.array([10**6]))[0] == pytest.approx(law(64))
    assert theory.dimension_factor(curve, 10**6) == pytest.approx(direct_factor(law(np.arange(2**20 + 1)), 10**6))


def test_bound_and_curve_as_data():
    b = theory.excess_risk_bound(theory.PowerLaw(1.0, 0.8), n=1000, epsilon=1.0, delta=1e-5, d=10**6)
    assert b["scale"] == pytest.approx(math.sqrt(math.log(1e5)) / 1000)
    scale = math.sqrt(math.log(1e5)) / 1000
    direct = direct_factor(1.0 * np.maximum(np.arange(2**20 + 1), 1.0) ** -0.8, 10**6)
    assert b["rlc"] == pytest.approx(scale * direct) and b["classical"] == pytest.approx(scale * 1.0 * 1000)
    assert b["ratio_to_classical"] == pytest.approx(direct / 1000)
    frame = theory.dimension_curve(theory.PowerLaw(1.0, 0.8), [10, 10**3, 10**6])
    assert list(frame.columns) == ["d", "rlc_factor", "no_decay_factor", "classical_factor", "ratio_to_no_decay"]
    # the comparison is the same bound with G_k = G_0 (a direct sum), whose ratio to G_0 √d tends to
    # √2 / (√2 − 1) ≈ 3.4 (up to the rounding of log₂ d)
    np.testing.assert_allclose(frame.no_decay_factor, [direct_factor(np.ones(2**20 + 1), d) for d in frame.d])
    assert 2.4 < frame.no_decay_factor.iloc[-1] / frame.classical_factor.iloc[-1] < 4.9
    assert frame.ratio_to_no_decay.is_monotonic_decreasing  # decay at c = 0.8 buys more the larger d is


def test_bad_input_is_a_clear_error():
    with pytest.raises(SpectralError, match="needs G_k up to"):
        theory.dimension_factor([1.0, 0.5, 0.3], 100)
    with pytest.raises(SpectralError, match="increasing"):
        theory.MeasuredCurve([0, 2, 1], [1.0, 0.5, 0.4])
    with pytest.raises(SpectralError):
        theory.excess_risk_bound([1.0], n=10, epsilon=-1, delta=1e-5, d=1)
