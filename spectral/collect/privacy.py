"""How examples are drawn each step, and what that costs in privacy (Opacus accountants).

Two samplers, each with the accounting that is valid for it:

``poisson``  every example joins a step independently with probability q = batch_size / n.
             Accounted as the subsampled Gaussian mechanism (RDP or PRV accountant).
``shuffle``  a fresh permutation per epoch cut into fixed batches of ``batch_size``.
             Shuffling gives no amplification we can account for, so each epoch is
             counted as one full Gaussian mechanism (every example is in at most one
             batch per epoch; parallel composition). Valid but conservative: it needs
             far more noise than ``poisson`` for the same epsilon.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from ..errors import SpectralError


@dataclass
class PrivacyPlan:
    """The DP settings of a run, fixed before its first step."""

    sampling: str
    accountant: str
    n_train: int
    batch_size: int
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    target_epsilon: float | None  # None when the noise multiplier was given directly

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.n_train if self.sampling == "poisson" else 1.0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.batch_size)

    def mechanisms(self, steps: int) -> int:
        """How many (subsampled) Gaussian mechanisms the first ``steps`` steps compose."""
        return steps if self.sampling == "poisson" else math.ceil(steps / self.steps_per_epoch)

    def to_dict(self) -> dict:
        return {**asdict(self), "sample_rate": self.sample_rate, "steps_per_epoch": self.steps_per_epoch}


def plan_privacy(*, sampling, accountant, n_train, batch_size, steps, max_grad_norm,
                 epsilon=None, delta=None, noise_multiplier=None) -> PrivacyPlan:
    """Fix the noise multiplier: given directly, or calibrated so the run spends ``epsilon``.

    ``delta`` defaults to ``n_train ** -1.1`` (the paper's choice).
    """
    if batch_size > n_train:
        raise SpectralError(f"batch size {batch_size} exceeds the {n_train} training examples")
    delta = n_train ** -1.1 if delta is None else delta
    plan = PrivacyPlan(sampling, accountant, n_train, batch_size, steps, 0.0, max_grad_norm, delta,
                       None if noise_multiplier is not None else epsilon)
    if noise_multiplier is not None:
        plan.noise_multiplier = float(noise_multiplier)
        return plan
    try:
        plan.noise_multiplier = float(get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=plan.sample_rate,
            steps=plan.mechanisms(steps), accountant=accountant, epsilon_tolerance=0.005))
    except ValueError as exc:
        raise SpectralError(f"cannot reach epsilon={epsilon} with these settings: {exc}") from None
    return plan


class PrivacyLedger:
    """An Opacus accountant fed with the mechanisms the run actually executes."""

    def __init__(self, plan: PrivacyPlan, history: list | None = None):
        self.plan = plan
        self._accountant = create_accountant(plan.accountant)
        if history:
            self._accountant.history = [tuple(h) for h in history]
        self._mechanisms = sum(h[2] for h in self._accountant.history)

    def record_step(self, step: int) -> None:
        """Account for step ``step`` (0-based), once it has been released."""
        if self.plan.noise_multiplier == 0:
            return
        for _ in range(self.plan.mechanisms(step + 1) - self._mechanisms):
            self._accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
            self._mechanisms += 1

    def epsilon(self) -> float:
        """Epsilon spent so far at the plan's delta (inf without noise, 0 before any step)."""
        if self.plan.noise_multiplier == 0:
            return math.inf
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=self.plan.delta))

    def state(self) -> list:
        return [list(h) for h in self._accountant.history]


def batch_indices(plan: PrivacyPlan, seed: int, step: int) -> np.ndarray:
    """Training-example indices of step ``step``: a pure function of (seed, step), so a
    resumed run draws exactly the batches the uninterrupted run would have."""
    if plan.sampling == "poisson":
        rng = np.random.default_rng([seed, 1, step])
        return np.flatnonzero(rng.random(plan.n_train) < plan.sample_rate)
    epoch, k = divmod(step, plan.steps_per_epoch)
    order = np.random.default_rng([seed, 2, epoch]).permutation(plan.n_train)
    return np.sort(order[k * plan.batch_size : (k + 1) * plan.batch_size])
