"""Study: how much of a printed spectrum slope is the eigensolver's? The authors' solver (orthogonal
iteration, ml-swissknife) at 10 and 50 iterations against the exact eigenvalues, on one trajectory, at
several k < n (the authors: k = 1,000 of n = 4,000; at k = n the iterate spans everything after one
iteration, so subspace errors only show below n). Every k starts from the first k of the same Gaussian columns.

The exact spectrum and the authors' iteration both run on the trajectory's Gram matrix (the analyse
stage's checkpoint is reused), so the study costs one pass over the data: H V₀ for the Gaussian start.

    python experiments/solver_study.py runs/repro-cpu --fractions 0.25 0.5   # k = n/4 and n/2
    # writes runs/repro-cpu/studies/solver/
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
    p.add_argument("--k", type=int, nargs="+", default=[], help="numbers of components")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5], help="k as fractions of n")
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
    ks = sorted({min(k, M.n) for k in args.k} | {max(1, int(f * M.n)) for f in args.fractions})
    everything = np.linalg.eigvalsh(G)[::-1]
    A0 = M.matmat(GaussianColumns(M.d, max(ks), args.seed))  # one pass; each k takes its first k columns
    columns, rows = [], []
    for k in ks:
        exact, fit_range = everything[:k], (args.fit_range[0], min(args.fit_range[1], k))
        for label, lam in [("exact", exact)] + [
            (f"seedcode {t} it", seedcode_iterate(G, A0[:, :k], t)[0]) for t in args.iterations
        ]:
            columns.append(pd.DataFrame({"k": k, "solver": label, "rank": np.arange(1, k + 1), "eigenvalue": lam}))
            f = fits.spectrum_fit(np.sqrt(np.clip(lam, 0, None)), fit_range)
            err = np.abs(lam - exact) / exact
            rows.append(
                {
                    "n": M.n,
                    "k": k,
                    "solver": label,
                    "fit_range": f"{fit_range[0]}-{fit_range[1]}",
                    "slope": f["slope"],
                    "ci_low": f["ci_low"],
                    "ci_high": f["ci_high"],
                    "r2": f["r2"],
                    "rel_err_top10_max": float(err[:10].max()),
                    "rel_err_rank100": float(err[min(99, k - 1)]),
                    "rel_err_rank_k": float(err[k - 1]),
                    "rel_err_max": float(err.max()),
                }
            )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    table.to_csv(out / "solver_study.csv", index=False)
    pd.concat(columns).to_csv(out / "solver_study_eigenvalues.csv", index=False)
    record = {"n": M.n, "ks": ks, "iterations": args.iterations, "fit_range": list(args.fit_range), "seed": args.seed}
    (out / "solver_study.json").write_text(json.dumps({**record, "table": table.to_dict(orient="records")}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
