"""The scale study derives every part's spectrum and G_k curves from one Gram matrix: check them
against the analyse stage run directly on that part's rows (an independent path through the data)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from helpers import power_law_trajectory, write_store

from spectral.analyse import principal_components, rlc
from spectral.analyse.matrix import TrajectoryMatrix

sys.path.insert(0, str(REPO / "experiments"))
import scale_study  # noqa: E402


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    H = power_law_trajectory(n=40, d=900, slope=0.8, seed=2)
    s = write_store(tmp_path_factory.mktemp("scale") / "run", H)
    return s, TrajectoryMatrix(s).gram()


def test_a_parts_spectrum_and_curves_equal_the_analyse_stage_on_its_rows(trajectory):
    store, G = trajectory
    rows = np.arange(10, 40)
    lam, inside = scale_study.in_sample_curve(G, rows, 12)
    spec = principal_components(store, 12, rows=rows, method="gram")
    np.testing.assert_allclose(lam, spec.eigenvalues, rtol=1e-9)
    direct = rlc.summarize(rlc.in_sample(spec))
    pd.testing.assert_frame_equal(inside.reset_index(drop=True), direct.reset_index(drop=True), rtol=1e-6)
    held = scale_study.held_out_curve(G, rows, 8)
    G_out, _ = rlc.held_out(store.rows("clipped")[rows].astype(np.float64), 8, split="half", method="gram")
    pd.testing.assert_frame_equal(held.reset_index(drop=True), rlc.summarize(G_out).reset_index(drop=True), rtol=1e-6)


def test_parts_are_named_and_bad_ones_refused():
    from spectral.errors import SpectralError

    parts = scale_study.parts_of(1000, ["first:250", "all", "drop:300"])
    assert {k: (v[0], len(v)) for k, v in parts.items()} == {
        "first 250": (0, 250),
        "all": (0, 1000),
        "steps 300…999": (300, 700),
    }
    with pytest.raises(SpectralError, match="unknown part"):
        scale_study.parts_of(10, ["last:3"])
