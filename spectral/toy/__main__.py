"""``python -m spectral.toy RUN_DIR``: the private geometric-median experiment (the paper's toy figure).

Runs the (d, mode, T, lr, seed) grid as batched DP-GD, picks (T, lr) per (d, mode) by mean train
loss, and writes toy_runs.csv, toy_best.csv, toy_config.json and the figure (toy.png/.pdf) into
RUN_DIR/toy (RUN_DIR/toy-seedcode with --seed-code-const), where python -m spectral.report finds them.
A rerun with the same settings continues where it stopped.

Examples
--------
  python -m spectral.toy runs/demo                        # the paper's grid (minutes)
  python -m spectral.toy runs/demo --seed-code-const --modes const
  python -m spectral.toy runs/demo --scale quick          # seconds
"""

from __future__ import annotations

from dataclasses import replace

from .. import cli
from ..errors import cli_entry
from ..layout import RunDir
from .geomedian import ACCOUNTANTS, MODES
from .grid import ToyConfig, toy

HELP = {
    "dims": "dimensions d",
    "modes": "coefficient decay modes",
    "steps": "step counts T of the grid",
    "lrs": "learning rates of the grid",
    "epsilon": "privacy budget epsilon",
    "delta": "privacy budget delta",
    "accountant": "advanced composition of Gaussian mechanisms (the seed code's) or RDP (tighter)",
    "seed_code_const": "the seed code's const mode: a_j = g0*j and noise for sensitivity 2*g0/n (understated)",
}
SCALES = {"quick": ToyConfig.quick, "paper": ToyConfig}


def build_parser():
    p = cli.parser("python -m spectral.toy", __doc__)
    cli.add_run_dir(p, "run directory; results go to RUN_DIR/toy")
    cli.add_common(p)
    cli.add_config(p, ToyConfig, HELP, choices={"modes": MODES, "accountant": ACCOUNTANTS})
    p.add_argument("--seeds", type=int, dest="n_seeds", help="number of seeds [5; quick: 2]")
    p.add_argument("--scale", choices=sorted(SCALES), default="paper", help="the paper's grid or a small one [paper]")
    p.add_argument("--no-figure", action="store_true", help="do not draw toy.png/.pdf")
    p.add_argument("--overwrite", action="store_true", help="replace toy results of other settings in the run")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.use_threads(args)
    config = replace(SCALES[args.scale](), **cli.config_values(args, ToyConfig))
    if args.n_seeds is not None:
        config = replace(config, seeds=tuple(range(args.n_seeds)))
    results = toy(args.run_dir, config, progress=not args.no_progress, device=args.device, overwrite=args.overwrite)
    out = RunDir(args.run_dir).toy(config.seed_code_const)
    cols = ["mode", "d", "T", "lr", "train_mean", "train_std", "test_mean", "test_std"]
    print(results.best[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not args.no_figure:
        from .figure import toy_figure

        paths = toy_figure(results.best, out / "toy")
        print("figure:", ", ".join(str(p) for p in paths))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
