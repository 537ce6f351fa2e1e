"""How much of a run's gradient energy each retraining subspace holds: the energy column of the
retraining-controls table, without training anything.

    python experiments/subspace_energy.py runs/ladder-s1 --rank 100 --out figures/retrain

For the run's stored ``clipped`` rows: the top 10 and top 100 of its own components, components 101–200,
a random 100-dimensional subspace of the gradients' span, a uniformly random 100-dimensional subspace, and
the complement of the top 100 (the same subspaces ``spectral.retrain`` builds, from the same seeds). Shares
Σ‖P h_t‖² / Σ‖h_t‖² over all steps and over the second half; the run's own components are fitted on all
steps, so their share of the second half is in-sample too (said in the table). Two passes per subspace.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from spectral import jsonio
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.errors import cli_entry
from spectral.layout import RunDir
from spectral.retrain import Subspace
from spectral.store import open as open_store


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="an analysed collect run (components.npy holds 2 x --rank or more)")
    p.add_argument("--rank", type=int, default=100)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    run = RunDir(args.run_dir)
    store = open_store(run.store)
    M = TrajectoryMatrix(store, "clipped")
    seed = int(store.manifest["config"]["seed"])
    r, analysis = args.rank, run.analysis("clipped")
    subspaces = {
        "rank 10": Subspace.from_analysis(analysis, 10),
        f"rank {r}": Subspace.from_analysis(analysis, r),
        f"components {r + 1}-{2 * r}": Subspace.from_analysis(analysis, r, first=r + 1),
        f"span-random {r}": Subspace.span_random(M, r, seed),
        f"random {r}": Subspace.random(store.d, r, seed),
        f"complement of top {r}": Subspace.from_analysis(analysis, r).orthogonal_complement(),
    }
    rows = [{"subspace": name, **sub.captured_energy(M)} for name, sub in subspaces.items()]
    table = pd.DataFrame(rows)
    out = args.out or run.root / "studies" / "subspace_energy"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "subspace_energy.csv", index=False)
    (out / "subspace_energy.json").write_text(
        jsonio.dumps({"run": str(run.root), "n": store.n_steps, "d": store.d, "rows": rows}, indent=1)
    )
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
