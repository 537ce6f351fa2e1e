"""The restricted-Lipschitz (RLC) bound of Li et al. 2022, as a calculator.

A loss has RLC coefficients G_0 >= G_1 >= ... if, for every k, the gradient outside some rank-k
subspace has norm at most G_k. DP-GD's excess empirical risk then scales like

    sqrt(log(1/δ)) / (n ε) · ‖x0 − x*‖ · (G_0 + Σ_{s=1}^{⌈log₂ d⌉} 2^{s/2} G_{2^{s−1}})

instead of the classical sqrt(log(1/δ)) / (n ε) · ‖x0 − x*‖ · G_0 √d (constants omitted, as in
the paper). With G_k ≈ G_0 k^{-c}: c > 1/2 → the factor is bounded in d (dimension-free),
c = 1/2 → it grows like log d, c < 1/2 → like d^{1/2 − c}.

G_k can be given as a :class:`PowerLaw`, a :class:`MeasuredCurve` (the analyse stage's G_k on a
k grid), or any callable k -> G_k accepting integer arrays.

>>> factor = dimension_factor(PowerLaw(1.0, 0.8), d=10**6)
>>> regime(0.8).name
'dimension-free'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import SpectralError

TOLERANCE = 0.05  # |c - 1/2| below this counts as the logarithmic boundary case


@dataclass(frozen=True)
class PowerLaw:
    """G_k = G_0 · max(k, 1)^{-c} (G_0 at k = 0, since G_0 is the plain Lipschitz constant)."""

    g0: float
    c: float

    def __call__(self, k) -> np.ndarray:
        k = np.asarray(k, dtype=float)
        return self.g0 * np.maximum(k, 1.0) ** -self.c


class MeasuredCurve:
    """G_k measured on a grid of k (e.g. the analyse stage's ``rlc_*.csv``), as a function of k.

    Between grid points G_k is interpolated linearly in log k – log G. Beyond the largest
    measured k it continues as ``extrapolate``: ``"power"`` (a power law fitted to the last
    ``tail`` grid points, the usual reading of a spectrum) or ``"flat"`` (G_k stays at its last
    value: the most conservative continuation for a non-increasing G_k).

    Parameters
    ----------
    ks : (m,) increasing non-negative integers, including 0 (G_0) or 1
    values : (m,) G_k at those k, positive
    """

    def __init__(self, ks, values, extrapolate: str = "power", tail: int = 5):
        ks, values = np.asarray(ks, dtype=float), np.asarray(values, dtype=float)
        if ks.ndim != 1 or ks.shape != values.shape or len(ks) < 2:
            raise SpectralError("a measured G_k curve needs matching 1-D arrays of at least two k values")
        if np.any(np.diff(ks) <= 0) or ks[0] < 0:
            raise SpectralError("the k values of a G_k curve must be increasing and non-negative")
        if np.any(values <= 0) or not np.all(np.isfinite(values)):
            raise SpectralError("G_k values must be positive and finite")
        if extrapolate not in ("power", "flat"):
            raise SpectralError(f"unknown extrapolation {extrapolate!r}; choose power or flat")
        self.ks, self.values, self.extrapolate = ks, values, extrapolate
        positive = ks >= 1
        if positive.sum() < 1:
            raise SpectralError("a measured G_k curve needs at least one k >= 1")
        # G_0 is the plain Lipschitz constant; without it, the first measured value stands in
        self.g0 = float(values[0])
        self._log_k, self._log_g = np.log(ks[positive]), np.log(values[positive])
        lk, lg = self._log_k[-tail:], self._log_g[-tail:]
        # the tail slope, never increasing (G_k is non-increasing by definition)
        self.tail_c = max(0.0, -np.polyfit(lk, lg, 1)[0]) if len(lk) >= 2 else 0.0

    def __call__(self, k) -> np.ndarray:
        k = np.asarray(k, dtype=float)
        out = np.exp(np.interp(np.log(np.maximum(k, 1.0)), self._log_k, self._log_g))
        beyond = k > self.ks[-1]
        if np.any(beyond):
            last = self.values[-1]
            if self.extrapolate == "power":
                last = last * (np.maximum(k, 1.0) / self.ks[-1]) ** -self.tail_c
            out = np.where(beyond, last, out)
        return np.where(k <= 0, self.g0, out)


def _as_curve(G):
    if callable(G):
        return G
    G = np.asarray(G, dtype=float)
    if G.ndim != 1 or len(G) == 0:
        raise SpectralError("G must be a callable, or a 1-D sequence G_0, G_1, ...")

    def sequence(k):
        k = np.asarray(k, dtype=int)
        if np.any(k >= len(G)):
            raise SpectralError(f"the G_k sequence has {len(G)} values; the bound needs G_k up to k={int(k.max())}")
        return G[k]

    return sequence


def dimension_factor(G, d) -> float:
    """G_0 + Σ_{s=1}^{⌈log₂ d⌉} 2^{s/2} G_{2^{s−1}}: the bound's dimension-dependent factor.

    G : callable k -> G_k, or a sequence (G_0, G_1, ...) long enough for k = 2^{⌈log₂ d⌉ − 1}
    d : the dimension (>= 1)
    """
    if d < 1:
        raise SpectralError(f"d must be >= 1, got {d}")
    G = _as_curve(G)
    s = np.arange(1, math.ceil(math.log2(d)) + 1) if d > 1 else np.arange(1, 1)
    terms = 2.0 ** (s / 2) * np.asarray(G(2 ** (s - 1)), dtype=float)
    return float(np.asarray(G(np.array([0])), dtype=float)[0] + terms.sum())


def classical_factor(g0: float, d) -> float:
    """G_0 √d: the factor of the classical, dimension-dependent DP-GD bound."""
    return float(g0 * math.sqrt(d))


def excess_risk_bound(G, *, n: int, epsilon: float, delta: float, d: int, radius: float = 1.0) -> dict:
    """The RLC bound and the classical bound on DP-GD's excess empirical risk (constants omitted).

    radius : ‖x0 − x*‖
    Returns a dict with ``rlc``, ``classical``, ``ratio_to_classical`` (rlc / classical) and the common ``scale``
    sqrt(log(1/δ)) / (n ε) · radius.
    """
    if n <= 0 or epsilon <= 0 or not 0 < delta < 1:
        raise SpectralError("need n > 0, epsilon > 0 and 0 < delta < 1")
    scale = math.sqrt(math.log(1 / delta)) / (n * epsilon) * radius
    G = _as_curve(G)
    g0 = float(np.asarray(G(np.array([0])))[0])
    rlc, classical = scale * dimension_factor(G, d), scale * classical_factor(g0, d)
    return {"scale": scale, "rlc": rlc, "classical": classical, "ratio_to_classical": rlc / classical}


def dimension_curve(G, ds) -> pd.DataFrame:
    """The RLC factor over dimensions ``ds``, against the same formula without decay (G_k ≡ G_0, which
    is a few times G_0 √d: 3.71 at d = 1,774,080) and the classical G_0 √d: one row per d (the paper's
    argument as data). ``ratio_to_no_decay`` is the RLC factor over the no-decay one: what the decay buys."""
    G = _as_curve(G)
    g0 = float(np.asarray(G(np.array([0])))[0])
    flat = PowerLaw(g0, 0.0)
    rows = [(int(d), dimension_factor(G, d), dimension_factor(flat, d), classical_factor(g0, d)) for d in ds]
    frame = pd.DataFrame(rows, columns=["d", "rlc_factor", "no_decay_factor", "classical_factor"])
    frame["ratio_to_no_decay"] = frame.rlc_factor / frame.no_decay_factor
    return frame


@dataclass(frozen=True)
class Regime:
    """What G_k ∝ k^{-c} implies for the bound's growth in d."""

    name: str  # "dimension-free", "logarithmic" or "polynomial"
    growth: str  # e.g. "O(1)", "O(log d)", "O(d^0.20)"
    c: float

    def __str__(self) -> str:
        return f"c = {self.c:.2f}: {self.name} ({self.growth} in d)"


def regime(c: float, tolerance: float = TOLERANCE) -> Regime:
    """The theory's verdict for an RLC exponent c (|c − 1/2| <= tolerance is the boundary case).

    G_k never exceeds G_0, so a fitted c below 0 means no decay: the classical √d, never worse.
    (The toolkit's reading of the bound; constants omitted.)"""
    c = max(float(c), 0.0)
    if abs(c - 0.5) <= tolerance:
        return Regime("logarithmic", "O(log d)", c)
    if c > 0.5:
        return Regime("dimension-free", "O(1)", c)
    return Regime("polynomial", f"O(d^{0.5 - c:.2f})", c)


def regime_interval(low: float, high: float, tolerance: float = TOLERANCE) -> str:
    """The verdict for a confidence interval [low, high] of c: one regime, or 'undecided' when it spans two."""
    a, b = regime(low, tolerance).name, regime(high, tolerance).name
    return a if a == b else f"undecided ({a} to {b})"
