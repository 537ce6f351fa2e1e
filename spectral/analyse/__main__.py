"""``python -m spectral.analyse RUN_DIR``: principal components and restricted-Lipschitz curves.

Writes into RUN_DIR/analysis/<stream>/:
  eigenvalues.npy, components.npy (d x k, memory-mappable), scores.npy, spectrum.csv, summary.json
  rlc_in_sample.csv, rlc_held_out.csv   G_k summaries per k (mean, rms, max, quantiles)
  rlc_steps.csv                         G_k per step for the k grid (in-sample)
  density_kde.csv                       Gaussian KDE of the top-k eigenvalues (log10 scale)
  density_slq.csv                       with --slq: the full spectrum of HᵀH/n by stochastic Lanczos quadrature

Examples
--------
  python -m spectral.analyse runs/demo --k 100
  python -m spectral.analyse runs/demo --k 500 --method randomized --max-memory 4G
  python -m spectral.analyse runs/demo --k 50 --stream private --centered
  python -m spectral.analyse runs/demo --k 100 --dask local:2          # or --dask tcp://scheduler:8786
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SpectralError, cli_entry
from ..store import open as open_store
from . import density, rlc
from .pca import METHODS, principal_components

UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * UNITS[text[-1]]) if text and text[-1] in UNITS else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 4G)") from None


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spectral.analyse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a store written by python -m spectral.collect")
    parser.add_argument("--k", type=int, default=100, help="number of principal components [100]")
    parser.add_argument("--stream", default="clipped", help="stream to analyse: clipped or private [clipped]")
    parser.add_argument("--method", default="auto", choices=METHODS, help="eigen-solver; auto picks by size [auto]")
    parser.add_argument("--centered", action="store_true", help="covariance instead of the uncentred second moment")
    parser.add_argument("--max-memory", type=parse_bytes, default=None, help="memory for block buffers, e.g. 2G")
    parser.add_argument("--holdout", default="half", choices=["half", "alternate", "none"],
                        help="held-out G_k: fit on first half / even steps, measure the rest [half]")
    parser.add_argument("--slq", action="store_true", help="also estimate the full spectral density (SLQ)")
    parser.add_argument("--out", type=Path, help="output directory [RUN_DIR/analysis/STREAM]")
    parser.add_argument("--dask", "--scheduler", dest="dask", metavar="SPEC",
                        help="run the passes on a dask cluster: local:N (N worker processes here) or tcp://HOST:PORT")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    store = open_store(args.run_dir)
    out = args.out or args.run_dir / "analysis" / args.stream
    out.mkdir(parents=True, exist_ok=True)
    client = None
    if args.dask:
        from .distributed import connect

        client = connect(args.dask)
        print(f"dask: {client}")
    kw = dict(stream=args.stream, method=args.method, centered=args.centered, max_memory=args.max_memory,
              progress=not args.no_progress, client=client)
    # per-pass checkpoints: an interrupted run continues; a finished Gram serves any later k
    spec = principal_components(store, args.k, components_out=out / "components.npy",
                                checkpoint_dir=out / "checkpoints", **kw)
    print(f"{spec.method}: {spec.reason}")
    spec.save(out)
    G = rlc.in_sample(spec)
    G.to_csv(out / "rlc_steps.csv")
    rlc.summarize(G).to_csv(out / "rlc_in_sample.csv", index=False)
    if args.holdout != "none":
        k_fit = min(args.k, store.n_steps // 2 - (1 if args.centered else 0))
        if k_fit < 1:
            raise SpectralError(f"too few steps ({store.n_steps}) for a held-out curve; pass --holdout none")
        G_out, _ = rlc.held_out(store, k_fit, split=args.holdout, ks=rlc.k_grid(k_fit), **kw)
        rlc.summarize(G_out).to_csv(out / "rlc_held_out.csv", index=False)
    if spec.k >= 2:
        density.eigenvalue_kde(spec.eigenvalues).to_csv(out / "density_kde.csv", index=False)
    if args.slq:
        slq, info = density.slq_density(store, args.stream, max_memory=args.max_memory)
        slq.to_csv(out / "density_slq.csv", index=False)
        print(f"SLQ: {info['passes']} passes; zero eigenvalues of H^T H/n: {info['zero_mass']:.4%} of d")
    summary = spec.summary()
    print(json.dumps({k: summary[k] for k in ("method", "k", "n", "d", "passes", "seconds", "max_residual",
                                               "captured_energy")}))
    print(f"results in {out}")
    if client is not None:
        client.close()


if __name__ == "__main__":
    main()
