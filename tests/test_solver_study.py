"""The solver study at k < n: exact eigenvalues against numpy, the authors' iteration converging with
more iterations, and its record of n and k."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from conftest import REPO
from helpers import power_law_trajectory, write_store

sys.path.insert(0, str(REPO / "experiments"))
import solver_study  # noqa: E402


def test_solver_study_below_n(tmp_path):
    H = power_law_trajectory(n=48, d=700, slope=0.7, seed=4)
    run = tmp_path / "run"
    write_store(run, H)
    solver_study.main([str(run), "--fractions", "0.25", "0.5", "--k", "48", "--iterations", "1", "20"])
    out = run / "studies" / "solver"
    record = json.loads((out / "solver_study.json").read_text())
    assert record["n"] == 48 and record["ks"] == [12, 24, 48]
    table = pd.read_csv(out / "solver_study.csv")
    eig = pd.read_csv(out / "solver_study_eigenvalues.csv")
    dense = np.linalg.eigvalsh(H.astype(np.float64) @ H.T.astype(np.float64))[::-1]
    for k in (12, 24):
        exact = eig[(eig.k == k) & (eig.solver == "exact")].eigenvalue.to_numpy()
        np.testing.assert_allclose(exact, dense[:k], rtol=1e-6)
        errs = table[table.k == k].set_index("solver").rel_err_max
        assert errs["seedcode 20 it"] < errs["seedcode 1 it"]  # more iterations, closer to the exact ones
        assert errs["seedcode 1 it"] > 1e-3  # below n one iteration is not exact: the study can see the solver
