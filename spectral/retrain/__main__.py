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
Controls: --ranks 0 (noise only: the clipped gradient projected to nothing, the same noise added),
--subspace-from random (a random r-dimensional subspace), --subspace-from RUN_DIR (the top-r
components of another run, e.g. another seed), --components 101-200 (the run's own components 101..200),
--subspace-from span-random (a random r-dimensional subspace of the stored gradients' span),
--subspace-from complement (updates projected onto the complement of the top r: the bulk). Each variant's
share of the run's gradient energy is recorded beside its accuracy (energy_captured in retrain_summary.json).
Rerunning with more --seeds continues a setting.

Examples
--------
  python -m spectral.retrain runs/demo --ranks 10 20 100 --seeds 3
  python -m spectral.retrain runs/demo --mode signal+noise --subspace-from public
  python -m spectral.retrain runs/demo --scale quick --non-private
  python -m spectral.retrain runs/demo --ranks 0 10 100 --steps 300 --seeds 3
  python -m spectral.retrain runs/demo --ranks 10 100 --no-full --subspace-from random
  python -m spectral.retrain runs/demo --ranks 100 --no-full --subspace-from runs/demo-seed2
  python -m spectral.retrain runs/demo --components 101-200 --no-full
  python -m spectral.retrain runs/demo --ranks 100 --no-full --subspace-from complement --mode signal+noise
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import cli, layout
from ..dp.config import CLIPPING
from ..errors import cli_entry
from ..layout import RunDir
from .run import MODES, SOURCES, RetrainConfig, retrain

SCALES = {
    "quick": {"steps": 40, "eval_every": 10, "seeds": 2, "ranks": (10, 100)},
    "paper": {"steps": 260, "eval_every": 25, "seeds": 3, "ranks": (10, 20, 100)},
}

HELP = {
    "ranks": "subspace ranks",
    "seeds": "seeds per variant (they change batches, noise and dropout; the head is the run's)",
    "mode": "how updates are restricted",
    "subspace_from": f"{', '.join(SOURCES)} or another run's directory (see above)",
    "steps": "DP steps per run",
    "eval_every": "evaluate on dev every N steps",
    "full": "also train the unrestricted baseline",
    "public_size": "public examples set aside (--subspace-from public)",
    "public_steps": "non-private steps on public data that estimate its subspace",
    "analysis": "analysis directory whose components span the subspace [RUN_DIR/analysis/clipped]",
    "components": "A-B: the run's own components A..B (e.g. 101-200: as many directions as the top 100, less "
    "energy) instead of --ranks",
}


def build_parser():
    p = cli.parser("python -m spectral.retrain", __doc__)
    cli.add_run_dir(p, "a collect run (analysed by python -m spectral.analyse)")
    cli.add_common(p)
    cli.add_config(p, RetrainConfig, HELP, choices={"mode": MODES})
    p.add_argument("--scale", choices=sorted(SCALES), help="preset steps/eval/seeds/ranks (quick: minutes on 2 cores)")
    p.add_argument("--lr", type=float, help="override the run's learning rate")
    p.add_argument(
        "--clipping",
        choices=CLIPPING,
        help="override the run's clipping method (all give the same clipped sum; bookkeeping is fastest)",
    )
    p.add_argument(
        "--non-private",
        action="store_true",
        help="no noise (σ = 0): where gradients live, without DP's noise floor (not private)",
    )
    p.add_argument("--out", help="results directory [RUN_DIR/retrain/<mode>-<source>[-nonprivate]]")
    p.add_argument("--overwrite", action="store_true", help="replace results of other settings in --out")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.use_threads(args)
    cli.quiet_library_warnings()
    settings = {"lr": args.lr} if args.lr else {}
    if args.clipping:
        settings["clipping"] = args.clipping
    if args.non_private:
        settings["noise_multiplier"] = 0.0
    values = {**SCALES.get(args.scale, {}), **cli.config_values(args, RetrainConfig)}
    config = RetrainConfig(**values, settings=settings)
    history = retrain(
        args.run_dir, config, args.out, progress=not args.no_progress, overwrite=args.overwrite, device=args.device
    )
    out = Path(args.out) if args.out else RunDir(args.run_dir).retrain(config.tag)
    summary = json.loads((out / layout.RETRAIN_SUMMARY).read_text())
    for variant, r in summary["final_accuracy"].items():
        print(f"{variant:>10}: final dev accuracy {r['mean']:.4f} ± {r['std']:.4f} ({r['seeds']} seeds)")
    for variant, s in summary["seconds_per_step"].items():
        print(f"{variant:>10}: {sum(s) / len(s):.3f} s per step")
    eps = summary["final_epsilon"]  # null in JSON when infinite (no noise)
    print(f"epsilon {'inf (no noise)' if eps is None else f'{eps:.2f}'}; {len(history)} evaluations in {out}")


if __name__ == "__main__":
    main()
