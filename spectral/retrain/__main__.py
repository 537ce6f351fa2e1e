"""``python -m spectral.retrain``: DP retraining with updates restricted to the top-r principal subspace.

Retrains from the pretrained model with the collect run's settings, once per rank and seed, plus the
unrestricted baseline ("full"), and writes retrain_history.csv (dev accuracy vs step),
retrain_summary.json and retrain_config.json into --out (default: RUN/retrain/<mode>-<source>,
which python -m spectral.report draws as figure 5, one panel per setting). A rerun with the same
settings skips finished runs.

Modes (how the update is restricted; the privacy accounting is that of the unrestricted run):
  signal        project the clipped gradient, then add full-dimensional noise (the seed code)
  signal+noise  project after adding noise (PDP-SGD style): noise energy falls from d to r dims
  coordinates   train r coefficients z of θ = θ0 + V z: clip and noise in r dimensions

--subspace-from trajectory uses the run's own components: NOT private (they come from private
gradients without noise). --subspace-from public estimates them from a disjoint public split.

Examples
--------
  python -m spectral.retrain --components runs/demo/analysis/clipped --rank 10 20 100 --seeds 3
  python -m spectral.retrain --components runs/demo/analysis/clipped --mode signal+noise --subspace-from public
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import cli_entry
from .run import MODES, SOURCES, RetrainConfig, retrain

SCALES = {"quick": {"steps": 40, "eval_every": 10, "seeds": 2, "ranks": [10, 100]},
          "paper": {"steps": 260, "eval_every": 25, "seeds": 3, "ranks": [10, 20, 100]}}
DEFAULT = {"steps": 200, "eval_every": 25, "seeds": 3, "ranks": [10, 20, 100]}


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m spectral.retrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--components", type=Path, required=True, help="an analysis directory: RUN/analysis/<stream>")
    p.add_argument("--rank", type=int, nargs="+", help="subspace ranks [10 20 100]")
    p.add_argument("--seeds", type=int, help="seeds per variant [3]")
    p.add_argument("--mode", choices=MODES, default="signal", help="how updates are restricted [signal]")
    p.add_argument("--subspace-from", choices=SOURCES, default="trajectory",
                   help="the run's own components (not private) or a public split [trajectory]")
    p.add_argument("--steps", type=int, help="DP steps per run [200]")
    p.add_argument("--eval-every", type=int, help="evaluate on dev every N steps [25]")
    p.add_argument("--scale", choices=sorted(SCALES), help="preset steps/eval/seeds (quick: minutes on 2 cores)")
    p.add_argument("--no-full", action="store_true", help="skip the unrestricted baseline")
    p.add_argument("--public-size", type=int, default=2000, help="public examples set aside [2000]")
    p.add_argument("--lr", type=float, help="override the run's learning rate")
    p.add_argument("--non-private", action="store_true",
                   help="no noise (σ = 0): where gradients live, without DP's noise floor (not private)")
    p.add_argument("--out", type=Path, help="results directory [RUN/retrain/<mode>-<source>[-nonprivate]]")
    p.add_argument("--overwrite", action="store_true", help="replace results of other settings in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    preset = SCALES.get(args.scale, DEFAULT)
    settings = {"lr": args.lr} if args.lr else {}
    if args.non_private:
        settings["noise_multiplier"] = 0.0
    config = RetrainConfig(
        components=str(args.components), ranks=tuple(args.rank or preset["ranks"]), seeds=args.seeds or preset["seeds"],
        mode=args.mode, subspace_from=args.subspace_from, steps=args.steps or preset["steps"],
        eval_every=args.eval_every or preset["eval_every"], full=not args.no_full, public_size=args.public_size,
        settings=settings)
    out = args.out or args.components.resolve().parents[1] / "retrain" / config.tag
    history = retrain(config, out, progress=not args.no_progress, overwrite=args.overwrite)
    summary = json.loads((out / "retrain_summary.json").read_text())
    for variant, r in summary["final_accuracy"].items():
        print(f"{variant:>10}: final dev accuracy {r['mean']:.4f} ± {r['std']:.4f} ({r['seeds']} seeds)")
    for variant, s in summary["seconds_per_step"].items():
        print(f"{variant:>10}: {sum(s) / len(s):.3f} s per step")
    print(f"epsilon {summary['final_epsilon']:.2f}; {len(history)} evaluations in {out}")


if __name__ == "__main__":
    main()
