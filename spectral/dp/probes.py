"""Probe batches: the gradient the same step would have had at other batch sizes.

With ``--probe-batches 128,256,512,1000``, every step, before its update, draws one extra sample of
M = 1000 training examples (uniformly without replacement, from a generator of its own keyed by
(seed, step), so the training run's batches, noise and dropout are untouched), computes their clipped
per-example gradients at the step's parameters with the run's clipping method, and stores for each m the
mean of the first m of them as stream ``probe<m>``:

    probe_m(t) = (1/m) Σ_{i ≤ m} clip(∇ℓ(x_{π_t(i)}; θ_t)),

nested prefixes of one draw, so a step costs one clipped batch of the largest size, not the sum of the
sizes. Each probe row is the step's mean clipped gradient m̄_t plus sampling noise of covariance
(1 − (m−1)/(N−1)) Σ_t / m (sampling without replacement): the ladder of rows measures how the trajectory's
spectrum moves with the batch along one and the same trajectory.

Probes are a measurement of private data, not a DP release: no noise is added to them and they are
outside the privacy accounting. Keep them for research on data you may analyse in the clear.

Dropout in the probes' forward passes draws from a generator keyed by (seed, step, rank), forked from
the training's, so probes change nothing the run would otherwise store. Under ``torchrun`` each rank
computes its share of every prefix segment and the segments' sums are all-reduced.
"""

from __future__ import annotations

import numpy as np

from ..layout import probe_sizes, probe_stream

__all__ = ["draw", "dropout_seed", "probe_sizes", "probe_stream", "segments"]

PROBE_KEY = 0x70726F6265  # "probe": keeps the probe draws apart from the batches' and the halves' streams


def draw(n_train: int, size: int, seed: int, step: int) -> np.ndarray:
    """The probe sample of ``step``: ``size`` distinct training indices in random order."""
    rng = np.random.default_rng([seed, step, PROBE_KEY])
    return rng.choice(n_train, size=size, replace=False)


def segments(sample: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``sample`` cut at the probe sizes: [0, m₁), [m₁, m₂), …; the prefix sum after segment j is the
    sum over the first m_j examples."""
    bounds = [0, *sizes]
    return [sample[a:b] for a, b in zip(bounds, bounds[1:])]


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The probes' dropout seed at ``step`` on ``rank`` (independent of the training's)."""
    return int(np.random.SeedSequence([seed, step, PROBE_KEY, rank]).generate_state(1)[0])
