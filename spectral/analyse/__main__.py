"""``python -m spectral.analyse RUN_DIR``: principal components and restricted-Lipschitz curves.

Writes into RUN_DIR/analysis/<stream>/:
  eigenvalues.npy, components.npy (d x k, memory-mappable), scores.npy, spectrum.csv, summary.json
  rlc_in_sample.csv, rlc_held_out.csv   G_k summaries per k (mean, rms, max, quantiles)
  rlc_steps.csv                         G_k per step for the k grid (in-sample)
  density_kde.csv                       Gaussian KDE of the top-k eigenvalues (log10 scale)
  density_slq.csv                       with --slq: the full spectrum of HᵀH/n by stochastic Lanczos quadrature

Examples
--------
  python -m spectral.analyse runs/demo                  # k = min(1000, n), as the paper
  python -m spectral.analyse runs/demo --plan           # passes, bytes, peak memory, predicted time
  python -m spectral.analyse runs/demo --k 500 --method randomized --max-memory 4G
  python -m spectral.analyse runs/demo --k 50 --stream private --centered
  python -m spectral.analyse runs/demo --dask local:2   # or --dask tcp://scheduler:8786
  python -m spectral.analyse runs/demo --batch-size 1000  # as if each step averaged 1000 examples
"""

from __future__ import annotations

import argparse
import json

from .. import cli
from ..errors import cli_entry
from .batch import ESTIMATORS
from .groups import GROUPINGS
from .pca import METHODS
from .run import HOLDOUTS, AnalyseConfig, analyse, analysis_dir, plan

UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

HELP = {
    "stream": "stream to analyse: clipped or private",
    "k": "number of principal components (default: min(1000, n), covering the paper's fit range 1…500)",
    "method": "eigen-solver; auto picks by size (see README)",
    "centered": "covariance instead of the uncentred second moment",
    "max_memory": "memory for block buffers, e.g. 2G (default: a quarter of the available RAM)",
    "holdout": "held-out G_k: fit on the first half / even steps, measure the rest",
    "slq": "also estimate the full spectral density (SLQ)",
    "iterations": "iterations of orthiter / seedcode (the authors: 10 in the final code, 50 in May 2022)",
    "dask": "run the passes on a dask cluster: local:N (N worker processes here) or tcp://HOST:PORT",
    "batch_size": "predict the spectrum and G_k at this batch size (a number or inf) from the run's sampling "
    "stream; writes analysis/STREAM@B<size>",
    "groups": "also one spectrum per group of parameters, from the same Gram pass: layer (transformer blocks) or "
    "param (each tensor); writes groups.csv and groups_summary.csv",
    "batch_estimator": "halves: per rank, linear in 1/B through the run's batch and its half batch (validated "
    "on probe ladders); steps (H H^T - f diag|D|^2) and matrix (H^T H - f D^T D): for comparison only, they "
    "fail where the sampling noise is concentrated (see spectral.analyse.batch)",
}


def parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * UNITS[text[-1]]) if text and text[-1] in UNITS else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 4G)") from None


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m spectral.analyse", __doc__)
    cli.add_run_dir(p, "a store written by python -m spectral.collect")
    cli.add_common(p)
    cli.add_config(
        p,
        AnalyseConfig,
        HELP,
        choices={"method": METHODS, "holdout": HOLDOUTS, "batch_estimator": ESTIMATORS, "groups": GROUPINGS},
    )
    for action in p._actions:  # sizes read as 512M / 4G
        if action.dest == "max_memory":
            action.type = parse_bytes
    p.add_argument("--scheduler", dest="dask", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    p.add_argument("--out", help="output directory [RUN_DIR/analysis/STREAM]")
    p.add_argument(
        "--plan", action="store_true", help="print the passes, bytes, peak memory and predicted time, then stop"
    )
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.use_threads(args)
    config = AnalyseConfig(**cli.config_values(args, AnalyseConfig))
    if args.plan:
        print("\n".join(plan(args.run_dir, config).lines()))
        return
    spec = analyse(args.run_dir, config, out=args.out, progress=not args.no_progress, device=args.device)
    print(f"{spec.method}: {spec.reason}")
    summary = spec.summary()
    print(
        json.dumps(
            {k: summary[k] for k in ("method", "k", "n", "d", "passes", "seconds", "max_residual", "captured_energy")}
        )
    )
    print(f"results in {args.out or analysis_dir(args.run_dir, config)}")


if __name__ == "__main__":
    main()
