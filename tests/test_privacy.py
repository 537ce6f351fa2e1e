"""Privacy plan and ledger against Opacus and the paper's published noise multiplier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from spectral.dp.privacy import PrivacyLedger, batch_indices, plan_privacy
from spectral.errors import SpectralError

PAPER = dict(sampling="poisson", accountant="rdp", n_train=67349, batch_size=1000, steps=4000, max_grad_norm=0.1)


def test_paper_sigma_matches_published_value_and_library():
    plan = plan_privacy(**PAPER, epsilon=8.0)
    assert plan.delta == pytest.approx(67349**-1.1)
    # Li et al. 2022 report sigma ~ 0.91 for SST-2, batch 1000, ~4000 steps, eps 8, delta n^-1.1
    assert plan.noise_multiplier == pytest.approx(0.91, abs=0.01)
    library = get_noise_multiplier(
        target_epsilon=8.0,
        target_delta=plan.delta,
        sample_rate=1000 / 67349,
        steps=4000,
        accountant="rdp",
        epsilon_tolerance=0.005,
    )
    assert plan.noise_multiplier == pytest.approx(library, rel=1e-6)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ledger_spends_the_target_by_the_last_step(accountant):
    plan = plan_privacy(**{**PAPER, "steps": 200, "accountant": accountant}, epsilon=3.0)
    ledger = PrivacyLedger(plan)
    eps = []
    for t in range(plan.steps):
        ledger.record_step(t)
        if t % 50 == 49:
            eps.append(ledger.epsilon())
    assert all(a < b for a, b in zip(eps, eps[1:]))  # spending grows
    assert eps[-1] <= 3.0 + 1e-6 and eps[-1] == pytest.approx(3.0, abs=0.05)


def test_ledger_matches_a_direct_opacus_accountant_and_resumes():
    plan = plan_privacy(**{**PAPER, "steps": 100}, noise_multiplier=1.1)
    ledger = PrivacyLedger(plan)
    for t in range(60):
        ledger.record_step(t)
    resumed = PrivacyLedger(plan, ledger.state())
    for t in range(60, 100):
        resumed.record_step(t)
    direct = RDPAccountant()
    for _ in range(100):
        direct.step(noise_multiplier=1.1, sample_rate=plan.sample_rate)
    assert resumed.epsilon() == pytest.approx(direct.get_epsilon(plan.delta), rel=1e-12)


def test_shuffle_accounts_one_full_mechanism_per_epoch():
    plan = plan_privacy(
        sampling="shuffle",
        accountant="rdp",
        n_train=1000,
        batch_size=100,
        steps=25,
        max_grad_norm=1.0,
        noise_multiplier=5.0,
        delta=1e-5,
    )
    assert plan.steps_per_epoch == 10 and plan.mechanisms(25) == 3
    ledger = PrivacyLedger(plan)
    ledger.record_step(0)
    first = ledger.epsilon()
    for t in range(1, 10):
        ledger.record_step(t)
    assert ledger.epsilon() == first  # the rest of epoch 1 touches no example twice
    ledger.record_step(10)
    direct = RDPAccountant()
    direct.step(noise_multiplier=5.0, sample_rate=1.0)
    direct.step(noise_multiplier=5.0, sample_rate=1.0)
    assert ledger.epsilon() == pytest.approx(direct.get_epsilon(1e-5))


def test_no_noise_means_no_privacy():
    plan = plan_privacy(**PAPER, noise_multiplier=0.0)
    ledger = PrivacyLedger(plan)
    ledger.record_step(0)
    assert math.isinf(ledger.epsilon())


def test_batches_are_deterministic_and_match_the_sampler():
    plan = plan_privacy(
        sampling="poisson",
        accountant="rdp",
        n_train=5000,
        batch_size=50,
        steps=400,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
    )
    sizes = np.array([len(batch_indices(plan, 0, t)) for t in range(400)])
    assert abs(sizes.mean() - 50) < 4 * np.sqrt(50 / 400)  # Binomial(5000, 0.01) mean
    np.testing.assert_array_equal(batch_indices(plan, 0, 17), batch_indices(plan, 0, 17))
    assert not np.array_equal(batch_indices(plan, 0, 17), batch_indices(plan, 1, 17))
    shuffle = plan_privacy(
        sampling="shuffle",
        accountant="rdp",
        n_train=1000,
        batch_size=100,
        steps=20,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
    )
    epoch = np.concatenate([batch_indices(shuffle, 0, t) for t in range(10)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(1000))  # every example once per epoch


def test_a_continued_run_draws_fresh_batches():
    """Composing two runs' mechanisms needs independent sampling: the second run continues the
    first's sequence of draws instead of repeating its batches."""
    kw = dict(
        sampling="poisson", accountant="rdp", n_train=5000, batch_size=50, max_grad_norm=1.0, noise_multiplier=1.0
    )
    first = plan_privacy(**kw, steps=6)
    second = plan_privacy(**kw, steps=4, prior=[(1.0, first.sample_rate, 6)])
    chained = [batch_indices(first, 0, t) for t in range(6)] + [batch_indices(second, 0, t) for t in range(4)]
    alone = plan_privacy(**kw, steps=10)
    for t in range(10):  # the chain draws exactly the batches of one uninterrupted 10-step run
        np.testing.assert_array_equal(chained[t], batch_indices(alone, 0, t))


def test_impossible_settings_are_refused():
    with pytest.raises(SpectralError, match="exceeds"):
        plan_privacy(**{**PAPER, "batch_size": 10**6}, epsilon=8.0)
