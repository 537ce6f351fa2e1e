"""The committed retraining table (figures/retrain/controls_table.csv, quoted by paper_repro.md) is what
experiments/retrain_controls.py computes from the committed per-setting histories, and its intervals and
paired differences are the textbook ones, recomputed here from the raw step-300 accuracies."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy import stats

OUT = REPO / "figures" / "retrain"


def mean_and_half_width(x: pd.Series) -> tuple[float, float]:
    """The mean of three seeds and the half-width of its 95% t-interval."""
    return x.mean(), stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)


def test_the_committed_controls_table_is_recomputed_from_the_committed_histories():
    controls = importlib.import_module("experiments.retrain_controls")
    energy = controls.load_energy(OUT)
    assert set(energy) >= {"rank 10", "rank 100", "random 100"}  # the committed energies, not an empty table
    fresh = controls.table(controls.load(OUT), energy)
    committed = pd.read_csv(OUT / "controls_table.csv")
    pd.testing.assert_frame_equal(fresh, committed, check_dtype=False, rtol=1e-12)


def test_the_signal_noise_rows_are_the_mean_and_t_interval_of_their_paired_seeds():
    committed = pd.read_csv(OUT / "controls_table.csv").set_index(["mode", "variant"])
    full = pd.read_csv(OUT / "signal-trajectory_history.csv")
    full = full[(full.variant == "full") & (full.step == 300)].set_index("seed").accuracy
    for setting in ["signal+noise-trajectory", "signal+noise-random", "signal+noise-span-random"]:
        h = pd.read_csv(OUT / f"{setting}_history.csv")
        for variant, g in h[h.step == 300].groupby("variant"):
            acc = g.set_index("seed").accuracy.sort_index()
            assert list(acc.index) == [0, 1, 2]  # three seeds, each paired with full's
            row = committed.loc[("signal+noise", variant)]
            assert (row.accuracy, row.ci95) == pytest.approx(mean_and_half_width(acc), rel=1e-12)
            diff = acc - full[acc.index]
            assert (row.diff_to_full, row.diff_ci95) == pytest.approx(mean_and_half_width(diff), rel=1e-12)
