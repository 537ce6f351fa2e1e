"""``python -m spectral.toy``: the private geometric-median experiment (the paper's toy figure).

Runs the (d, mode, T, lr, seed) grid as batched DP-GD, picks (T, lr) per (d, mode) by mean train
loss, writes toy_runs.csv, toy_best.csv and toy_config.json into --out, and draws the figure
(toy.png/.pdf) there. A rerun with the same settings continues where it stopped.

Examples
--------
  python -m spectral.toy --out runs/toy                      # the paper's grid (minutes)
  python -m spectral.toy --out runs/toy-seedcode --seed-code-const
  python -m spectral.toy --quick --out runs/toy-quick
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..errors import cli_entry
from .geomedian import ACCOUNTANTS, MODES
from .grid import ToyConfig, run_grid


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m spectral.toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/toy"), help="results directory (default: runs/toy)")
    p.add_argument("--quick", action="store_true", help="a small grid (seconds), for tests and the quick reproduction")
    p.add_argument("--dims", type=int, nargs="+", help="dimensions (default: 20 50 100 200 500 1000 2000)")
    p.add_argument("--modes", nargs="+", choices=MODES, help="decay modes (default: all five)")
    p.add_argument("--steps", type=int, nargs="+", help="step counts T of the grid (default: 10 20 40 ... 5120)")
    p.add_argument("--lrs", type=float, nargs="+", help="learning rates of the grid (default: 1e-4 3e-4 ... 3)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5)")
    p.add_argument("--epsilon", type=float, default=2.0)
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="advanced",
                   help="advanced composition of Gaussian mechanisms (the seed code's) or RDP (tighter)")
    p.add_argument("--seed-code-const", action="store_true",
                   help="the seed code's const mode: a_j = g0*j and noise for sensitivity 2*g0/n (understated)")
    p.add_argument("--no-figure", action="store_true", help="do not draw toy.png/.pdf")
    args = p.parse_args(argv)

    config = ToyConfig.quick() if args.quick else ToyConfig()
    overrides = {"epsilon": args.epsilon, "delta": args.delta, "accountant": args.accountant,
                 "seed_code_const": args.seed_code_const}
    if args.dims:
        overrides["dims"] = tuple(args.dims)
    if args.modes:
        overrides["modes"] = tuple(args.modes)
    if args.steps:
        overrides["steps"] = tuple(args.steps)
    if args.lrs:
        overrides["lrs"] = tuple(args.lrs)
    if args.seeds is not None:
        overrides["seeds"] = tuple(range(args.seeds))
    config = replace(config, **overrides)
    results = run_grid(config, out=args.out)
    cols = ["mode", "d", "T", "lr", "train_mean", "train_std", "test_mean", "test_std"]
    print(results.best[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not args.no_figure:
        from ..report.figures import toy_figure

        paths = toy_figure(results.best, args.out / "toy")
        print("figure:", ", ".join(str(p) for p in paths))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
