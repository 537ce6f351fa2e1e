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
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from ..errors import SpectralError


def _quiet(fn, **kwargs):
    # Opacus warns when the best RDP order sits at the edge of its grid; the bound is still valid, and
    # widening the grid to order 1024 leaves our small-sigma epsilons unchanged (checked at sigma 0.42)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        return fn(**kwargs)


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
    # (noise_multiplier, sample_rate, mechanisms) already spent on the same data by the run(s) this
    # one continues (``init_from``); composed into every epsilon, and into the calibration
    prior: list = field(default_factory=list)

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.n_train if self.sampling == "poisson" else 1.0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.batch_size)

    @property
    def prior_mechanisms(self) -> int:
        """How many mechanisms the runs this one continues released: the batch draws continue after them."""
        return int(sum(h[2] for h in self.prior))

    def mechanisms(self, steps: int) -> int:
        """How many (subsampled) Gaussian mechanisms the first ``steps`` steps compose."""
        return steps if self.sampling == "poisson" else math.ceil(steps / self.steps_per_epoch)

    def to_dict(self) -> dict:
        return {**asdict(self), "sample_rate": self.sample_rate, "steps_per_epoch": self.steps_per_epoch}


def compose_epsilon(history, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of a sequence of subsampled Gaussian mechanisms, composed by an Opacus
    accountant. history: ``[(noise_multiplier, sample_rate, count), ...]``; sigma 0 means no privacy."""
    history = [tuple(h) for h in history if h[2] > 0]
    if any(h[0] == 0 for h in history):
        return math.inf
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = history
    return float(_quiet(acc.get_epsilon, delta=delta))


def _calibrate_after(prior, epsilon, delta, sample_rate, mechanisms, accountant, tolerance=0.005) -> float:
    """The noise multiplier for which ``prior`` followed by this run spends ``epsilon`` in total
    (Opacus' own bracket-and-bisect search, run on the composed history)."""
    spent = lambda sigma: compose_epsilon([*prior, (sigma, sample_rate, mechanisms)], delta, accountant)  # noqa: E731
    already = compose_epsilon(prior, delta, accountant)
    if already >= epsilon:
        raise SpectralError(f"the run this one continues already spent epsilon={already:.3g} >= the target {epsilon}")
    low, high = 0.0, 10.0
    eps_high = spent(high)
    while eps_high > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise SpectralError(f"cannot reach epsilon={epsilon} with these settings")
        eps_high = spent(high)
    while eps_high < epsilon - tolerance:
        mid = (low + high) / 2
        eps_mid = spent(mid)
        if eps_mid > epsilon:
            low = mid
        else:
            high, eps_high = mid, eps_mid
    return high


# The PRV accountant discretises the privacy-loss distribution on a grid that grows with epsilon
# (measured at q = 0.0019, 1000 steps: 1.4 GB and 35 s at epsilon 30, 4.2 GB and 70 s at 100, over 20 GB
# at 1000). Above this epsilon (its RDP bound for a given sigma) it is refused before it can exhaust memory.
PRV_MAX_EPSILON = 50.0


def _check_prv(epsilon: float) -> None:
    if epsilon > PRV_MAX_EPSILON:
        raise SpectralError(
            f"the PRV accountant's memory grows with epsilon (4 GB at 100, over 20 GB at 1000); this run's epsilon "
            f"is about {epsilon:.3g}; use --accountant rdp above epsilon {PRV_MAX_EPSILON:g}"
        )


def plan_privacy(
    *,
    sampling,
    accountant,
    n_train,
    batch_size,
    steps,
    max_grad_norm,
    epsilon=None,
    delta=None,
    noise_multiplier=None,
    prior=(),
) -> PrivacyPlan:
    """Fix the noise multiplier: given directly, or calibrated so the run spends ``epsilon``
    (in total with ``prior``, the mechanisms already spent by the run this one continues).

    ``delta`` defaults to ``n_train ** -1.1`` (the paper's choice).
    """
    if batch_size > n_train:
        raise SpectralError(f"batch size {batch_size} exceeds the {n_train} training examples")
    delta = n_train**-1.1 if delta is None else delta
    plan = PrivacyPlan(sampling, accountant, n_train, batch_size, steps, 0.0, max_grad_norm, delta,
                       None if noise_multiplier is not None else epsilon, [list(h) for h in prior])  # fmt: skip
    if accountant == "prv":  # checked with the cheap RDP bound before PRV builds its grid
        _check_prv(
            epsilon
            if noise_multiplier is None
            else compose_epsilon([*prior, (noise_multiplier, plan.sample_rate, plan.mechanisms(steps))], delta)
        )
    if noise_multiplier is not None:
        plan.noise_multiplier = float(noise_multiplier)
        return plan
    if prior:
        plan.noise_multiplier = _calibrate_after(
            plan.prior, epsilon, delta, plan.sample_rate, plan.mechanisms(steps), accountant
        )
        return plan
    try:
        plan.noise_multiplier = float(
            _quiet(get_noise_multiplier, target_epsilon=epsilon, target_delta=delta, sample_rate=plan.sample_rate,
                   steps=plan.mechanisms(steps), accountant=accountant, epsilon_tolerance=0.005)
        )  # fmt: skip
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
        self._rdp_cache: dict = {}

    def record_step(self, step: int) -> None:
        """Account for step ``step`` (0-based), once it has been released."""
        for _ in range(self.plan.mechanisms(step + 1) - self._mechanisms):
            self._accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
            self._mechanisms += 1

    def history(self, include_prior: bool = True) -> list:
        """``[(noise_multiplier, sample_rate, count), ...]`` of the mechanisms released so far
        (sigma 0, a run without noise, composes to epsilon = inf)."""
        own = [tuple(h) for h in self._accountant.history]
        return [tuple(h) for h in self.plan.prior] + own if include_prior else own

    def epsilon(self, exact: bool = True) -> float:
        """Epsilon spent so far at the plan's delta, composed with the plan's prior
        (inf without noise, 0 before any step).

        RDP is cheap every step: the RDP of a (sigma, q) step is computed once and composition is
        a sum (what Opacus' RDP accountant computes, without recomputing it over the whole history).
        PRV costs up to a second, so with ``exact=False`` it returns NaN; collect asks for it at
        commits and at the last step only.
        """
        history = self.history()
        if any(h[0] == 0 and h[2] > 0 for h in history):
            return math.inf  # a step without noise: no privacy, whatever the accountant
        if self.plan.accountant != "rdp":
            return compose_epsilon(history, self.plan.delta, self.plan.accountant) if exact else math.nan
        if not history:
            return 0.0
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = sum(count * self._step_rdp(sigma, q) for sigma, q, count in history if count > 0)
        orders = self._accountant.DEFAULT_ALPHAS
        return float(_quiet(get_privacy_spent, orders=orders, rdp=rdp, delta=self.plan.delta)[0])

    def _step_rdp(self, sigma: float, q: float) -> np.ndarray:
        """RDP of one subsampled Gaussian step at Opacus' default orders (cached per sigma and q)."""
        from opacus.accountants.analysis.rdp import compute_rdp

        if (sigma, q) not in self._rdp_cache:
            orders = self._accountant.DEFAULT_ALPHAS
            self._rdp_cache[sigma, q] = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))
        return self._rdp_cache[sigma, q]

    def state(self) -> list:
        return [list(h) for h in self.history(include_prior=False)]


def batch_indices(plan: PrivacyPlan, seed: int, step: int) -> np.ndarray:
    """Training-example indices of step ``step``: a pure function of (seed, step), so a
    resumed run draws exactly the batches the uninterrupted run would have.

    A run that continues others (``plan.prior``) continues their sequence of draws: composing the
    accountant's mechanisms assumes every step samples afresh, which reusing the first run's
    batches (same seed, same step numbers) would break.
    """
    if plan.sampling == "poisson":
        rng = np.random.default_rng([seed, 1, plan.prior_mechanisms + step])
        return np.flatnonzero(rng.random(plan.n_train) < plan.sample_rate)
    epoch, k = divmod(step, plan.steps_per_epoch)
    order = np.random.default_rng([seed, 2, plan.prior_mechanisms + epoch]).permutation(plan.n_train)
    return np.sort(order[k * plan.batch_size : (k + 1) * plan.batch_size])


def half_split(plan: PrivacyPlan, seed: int, step: int, batch: np.ndarray) -> np.ndarray:
    """Which examples of step ``step``'s batch form half A of the ``sampling`` stream (a boolean mask):
    each example independently with probability 1/2, a pure function of (seed, step), like the batch.
    See :mod:`spectral.dp.sampling` for what the halves' difference estimates."""
    rng = np.random.default_rng([seed, 3, plan.prior_mechanisms + step])
    return rng.random(len(batch)) < 0.5


def privacy_history(store) -> list:
    """Every mechanism a collect run spent on the training data up to its last commit, including the
    runs it continued: ``[(noise_multiplier, sample_rate, count), ...]`` (sigma 0: no privacy)."""
    dp = store.manifest.get("dp", {})
    own = [tuple(h) for h in store.checkpoint.meta.get("accountant", [])]
    if not own and dp.get("noise_multiplier") == 0 and store.n_steps:
        own = [(0.0, dp["sample_rate"], store.n_steps)]  # stores written before sigma-0 steps were recorded
    return [tuple(h) for h in dp.get("prior", [])] + own
