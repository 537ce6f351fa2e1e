"""The paper's convex toy: private generalised geometric median, F(β) = (1/n) Σ_i ‖A^{1/2}(β − β_i)‖₂.

A^{1/2} = diag(a_1 … a_d) with a decay mode (``const`` a_j = g0, ``quarter`` g0·j^{-1/4},
``sqrt`` g0·j^{-1/2}, ``linear`` g0·j^{-1}, ``quadratic`` g0·j^{-2}). Only the first coordinate of
each β_i is random (N(1, 1)); the others are 0, so the optimum does not move with d. The per-example
gradient a ⊙ r_i / ‖r_i‖ (r_i = a ⊙ (β − β_i)) has norm at most max_j a_j, so replacing one example
moves the mean gradient by at most 2·max_j a_j / n: the sensitivity of every DP-GD step.

Because β_i = b_i e_1, ‖r_i‖² = a_1²(β_1 − b_i)² + Σ_{j≥2} a_j² β_j², so a full-batch gradient costs
O(n + d) instead of O(n·d): the whole (T, lr, seed) grid runs as batched tensor operations.

The seed code (Li et al.'s ``geometric_median.py``) differs in two ways, kept behind
``seed_code_const=True`` for comparison with the published figure: its ``const`` mode uses
a_j = g0·j (increasing in j, not constant), and its noise is calibrated to sensitivity 2·g0/n,
which understates the true sensitivity 2·max_j a_j / n = 2·g0·d/n of that mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SpectralError

MODES = ("const", "quarter", "sqrt", "linear", "quadratic")
DECAY = {"const": 0.0, "quarter": 0.25, "sqrt": 0.5, "linear": 1.0, "quadratic": 2.0}
ACCOUNTANTS = ("advanced", "rdp")


def coefficients(d: int, mode: str, g0: float = 3.0, seed_code_const: bool = False) -> np.ndarray:
    """a (d,): the diagonal of A^{1/2} for a decay mode."""
    if mode not in DECAY:
        raise SpectralError(f"unknown decay mode {mode!r}; choose from {', '.join(MODES)}")
    j = np.arange(1, d + 1, dtype=np.float64)
    if mode == "const" and seed_code_const:
        return g0 * j
    return g0 * j ** -DECAY[mode]


def sensitivity(a: np.ndarray, n: int, g0: float = 3.0, seed_code: bool = False) -> float:
    """L2 sensitivity of the mean gradient under replacing one example: 2·max_j a_j / n
    (the seed code: 2·g0/n whatever the mode)."""
    return 2 * (g0 if seed_code else float(np.max(a))) / n


@dataclass(frozen=True)
class ToyData:
    """First coordinates of β_i (the others are 0): train (n_train,), test (n_test,)."""

    train: np.ndarray
    test: np.ndarray

    @classmethod
    def sample(cls, n_train: int = 10_000, n_test: int = 10_000, mean: float = 1.0, std: float = 1.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        return cls(mean + std * rng.standard_normal(n_train), mean + std * rng.standard_normal(n_test))

    def full(self, split: str, d: int) -> np.ndarray:
        """The β_i as an (n, d) matrix (for brute-force checks)."""
        b = getattr(self, split)
        out = np.zeros((len(b), d))
        out[:, 0] = b
        return out


# ---------------------------------------------------------------------- loss and gradient
def _radii(beta, a, b):
    """‖a ⊙ (β − b_i e_1)‖ for every run and example: (runs, n), and the (runs, 1) offsets β_1 − b."""
    rest = (a[..., 1:] * beta[..., 1:]).pow(2).sum(-1, keepdim=True)  # Σ_{j≥2} a_j² β_j²
    diff = beta[..., :1] - b  # (runs, n)
    return torch.sqrt(rest + (a[..., :1] * diff) ** 2), diff


def loss(beta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F(β) for every run: beta (runs, d), a (runs, d) or (d,), b (n,) → (runs,)."""
    r, _ = _radii(beta, a, b)
    return r.mean(-1)


def gradient(beta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∇F(β) (runs, d): a ⊙ mean_i r_i/‖r_i‖ with r_i = a ⊙ (β − β_i), in O(n + d) per run."""
    rest = (a[..., 1:] * beta[..., 1:]).pow(2).sum(-1, keepdim=True)
    diff = beta[..., :1] - b  # (runs, n)
    scaled = a[..., :1] * diff
    inv = torch.rsqrt(torch.addcmul(rest, scaled, scaled))
    inv = torch.nan_to_num(inv, posinf=0.0)  # at r_i = 0 the subgradient 0 is used
    first = a[..., :1] ** 2 * (diff * inv).mean(-1, keepdim=True)
    rest = a[..., 1:] ** 2 * beta[..., 1:] * inv.mean(-1, keepdim=True)
    return torch.cat([first, rest], dim=-1)


def optimum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """(β*, F(β*)): β* = (median of b, 0, …, 0), since F = mean |a_1(β_1 − b_i)| on that line."""
    beta = np.zeros(len(a))
    beta[0] = np.median(b)
    return beta, float(a[0] * np.mean(np.abs(b - beta[0])))


# ---------------------------------------------------------------------- privacy
def advanced_composition_epsilon(step_epsilon: float, steps: int, delta_prime: float) -> float:
    """ε of T-fold (ε_s, δ_s)-DP composition (Dwork–Rothblum–Vadhan):
    ε_s √(2T log(1/δ')) + T ε_s (e^{ε_s} − 1), holding with δ = T δ_s + δ'."""
    return step_epsilon * math.sqrt(2 * steps * math.log(1 / delta_prime)) + steps * step_epsilon * math.expm1(
        step_epsilon
    )


def step_privacy(epsilon: float, delta: float, steps: int, tol: float = 1e-10) -> tuple[float, float]:
    """(ε_s, δ_s) per step for a total (ε, δ) over ``steps`` steps by advanced composition, as
    the seed code: δ_s = δ/(T+1) (so T δ_s + δ' = δ with δ' = δ_s), ε_s the largest value whose
    composition stays within ε (bisection)."""
    if epsilon <= 0 or not 0 < delta < 1 or steps < 1:
        raise SpectralError("need epsilon > 0, 0 < delta < 1 and steps >= 1")
    step_delta = delta / (steps + 1)
    lo, hi = 0.0, epsilon
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if advanced_composition_epsilon(mid, steps, step_delta) <= epsilon else (lo, mid)
    return lo, step_delta


def gaussian_sigma(epsilon: float, delta: float) -> float:
    """Noise multiplier of the classic Gaussian mechanism: √(2 log(1.25/δ)) / ε (std = this × sensitivity)."""
    return math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def noise_multiplier(epsilon: float, delta: float, steps: int, accountant: str = "advanced") -> float:
    """Per-step noise std / sensitivity for ``steps`` full-batch Gaussian steps with total (ε, δ).

    ``advanced``: the seed code's advanced composition of classic Gaussian mechanisms.
    ``rdp``: Opacus' RDP accountant with sampling rate 1 (tighter).
    """
    if accountant == "advanced":
        return gaussian_sigma(*step_privacy(epsilon, delta, steps))
    if accountant == "rdp":
        from opacus.accountants.utils import get_noise_multiplier

        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=1.0,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=0.001,
            )
        )
    raise SpectralError(f"unknown accountant {accountant!r}; choose from {', '.join(ACCOUNTANTS)}")


# ---------------------------------------------------------------------- DP-GD
def step_noise(seeds, steps: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise (S, T, d), one generator per seed (shared by all modes and learning
    rates, so their comparison is not blurred by different draws)."""
    out = torch.empty((len(seeds), steps, d), dtype=dtype)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s) * 1_000_003 + steps * 7919 + d)
        out[i] = torch.randn((steps, d), generator=g, dtype=torch.float64).to(dtype)
    return out


def dp_gd(
    a: torch.Tensor, b: torch.Tensor, lrs: torch.Tensor, noise: torch.Tensor, noise_std: torch.Tensor
) -> torch.Tensor:
    """Full-batch DP-GD from β = 0 with iterate averaging, for many runs at once.

    a : (M, d) coefficients per mode; b : (n,) first coordinates of the training β_i
    lrs : (L,) learning rates; noise : (S, T, d) standard normal draws per seed
    noise_std : (M,) noise std per mode (sensitivity × multiplier)

    Returns the averaged iterates (1/T) Σ_{t=1}^T β_t, shape (M, L, S, d).
    """
    M, d = a.shape
    S, T, _ = noise.shape
    L = len(lrs)
    aa = a[:, None, None, :].expand(M, L, S, d).reshape(-1, d)
    lr = lrs[None, :, None, None].expand(M, L, S, 1).reshape(-1, 1)
    std = noise_std[:, None, None, None].expand(M, L, S, 1).reshape(-1, 1)
    beta = torch.zeros((M * L * S, d), dtype=a.dtype, device=a.device)
    avg = torch.zeros_like(beta)
    for t in range(T):
        z = noise[:, t][None, None].expand(M, L, S, d).reshape(-1, d)
        beta = beta - lr * (gradient(beta, aa, b) + std * z)
        avg += (beta - avg) / (t + 1)
    return avg.reshape(M, L, S, d)
