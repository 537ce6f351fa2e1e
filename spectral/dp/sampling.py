"""The ``sampling`` stream: each step's sampling noise, measured from the step's own batch.

Every stored ``clipped`` row is a batch mean, so it carries the noise of drawing the batch. Under
Poisson sampling at rate q with expected batch B̄ = qN over N training examples, with g_i the clipped
gradient of example i (at the step's parameters) and b_i ~ Bernoulli(q) independent,

    row = (1/B̄) Σ_i b_i g_i,      Cov(row) = (q(1 − q)/B̄²) Σ_i g_i g_iᵀ = (1 − q) D,   D = Σ_i g_i g_iᵀ / (B̄ N).

Split the batch at random into halves A and B (s_i = ±1, each with probability 1/2, independent of
everything else) and store Δ = (S_A − S_B)/B̄ = (1/B̄) Σ_i b_i s_i g_i, over the same normaliser as the
row. Then E[Δ] = 0 and E[Δ Δᵀ] = (q/B̄²) Σ_i g_i g_iᵀ = D: the second moment of Δ is the sampling-noise
covariance of the row, up to the factor 1/(1 − q) (1.002 at B̄ = 128 of SST-2's 67,349).

What the same steps would show at another batch B (expected; q_B = B/N): the row's noise covariance
becomes (1 − q_B) D B̄/B = (B̄/B − q) D, so per step

    E[h hᵀ at B] = E[h hᵀ at B̄] − (1 − B̄/B) D,   estimated by   h hᵀ − (1 − B̄/B) Δ Δᵀ,

and over the trajectory HᵀH − (1 − B̄/B) ΔᵀΔ (``spectral.analyse.batch``). B = ``inf`` means the full
data set every step (q_B = 1): factor 1 − q. The estimate is unbiased but noisy: it can have negative
eigenvalues, which are reported as such.

Cost: the halves are formed before the physical chunks (each half sorted by length and chunked), so a
step runs at most one more chunk than without the stream, and S_A is one copy of the clipped sum taken
between the halves (plus one all-reduce of it in a data-parallel job). No third backward pass.
"""

from __future__ import annotations

import torch


def sampling_row(summed_half_a: torch.Tensor, summed_total: torch.Tensor, expected_batch_size: float) -> torch.Tensor:
    """Δ = (S_A − S_B)/B̄ = (2 S_A − S)/B̄ from half A's clipped sum and the whole batch's."""
    return (2 * summed_half_a - summed_total) / expected_batch_size
