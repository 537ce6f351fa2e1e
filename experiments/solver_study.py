"""Study: how much of a printed spectrum slope is the eigensolver's? The authors' solver (orthogonal
iteration, ml-swissknife) at 10 and 50 iterations against the exact eigenvalues, on one trajectory.

The exact spectrum and the authors' iteration both run on the trajectory's Gram matrix (the analyse
stage's checkpoint is reused), so the study costs one pass over the data: H V₀ for the Gaussian start.

    python experiments/solver_study.py runs/repro-cpu      # writes runs/repro-cpu/studies/solver/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from spectral.analyse.matrix import TrajectoryMatrix
from spectral.analyse.solvers import GaussianColumns, seedcode_iterate
from spectral.errors import cli_entry
from spectral.layout import RunDir
from spectral.report import fits
from spectral.store import open as open_store


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--iterations", type=int, nargs="+", default=[10, 50])
    p.add_argument("--fit-range", type=int, nargs=2, default=(1, 500))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = RunDir(args.run_dir)
    store = open_store(run.store)
    out = run.root / "studies" / "solver"
    out.mkdir(parents=True, exist_ok=True)
    M = TrajectoryMatrix(store, progress=True)
    G = M.gram(checkpoint=run.analysis("clipped") / "checkpoints" / "gram")
    k = min(args.k, M.n)
    exact = np.linalg.eigvalsh(G)[::-1][:k]
    A0 = M.matmat(GaussianColumns(M.d, k, args.seed))
    columns, rows = {"rank": np.arange(1, k + 1), "exact": exact}, []
    for label, lam in [("exact", exact)] + [
        (f"seedcode {t} it", seedcode_iterate(G, A0, t)[0]) for t in args.iterations
    ]:
        columns[label] = lam
        f = fits.spectrum_fit(np.sqrt(np.clip(lam, 0, None)), args.fit_range)
        err = np.abs(lam - exact) / exact
        rows.append(
            {
                "solver": label,
                "slope": f["slope"],
                "ci_low": f["ci_low"],
                "ci_high": f["ci_high"],
                "r2": f["r2"],
                "rel_err_top10_max": float(err[:10].max()),
                "rel_err_rank100": float(err[min(99, k - 1)]),
                "rel_err_rank500": float(err[min(499, k - 1)]),
                "rel_err_max": float(err.max()),
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    table.to_csv(out / "solver_study.csv", index=False)
    pd.DataFrame(columns).to_csv(out / "solver_study_eigenvalues.csv", index=False)
    (out / "solver_study.json").write_text(
        json.dumps(
            {"k": k, "fit_range": list(args.fit_range), "seed": args.seed, "table": table.to_dict(orient="records")},
            indent=1,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
