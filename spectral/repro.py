"""``python -m spectral.repro --scale quick|paper``: the paper's figures end to end.

collect → analyse → toy → retrain → report, each stage through its own command,
so every intermediate result stays on disk and a rerun continues where it stopped (collect resumes,
analyse reuses its Gram checkpoint, the toy grid skips finished groups).

  quick   the embedded default (all-MiniLM-L6-v2, SST-2 from $SPECTRAL_DATA), 300 DP steps,
          k = 100, a reduced toy grid; well under 30 minutes on 2 CPU cores
  paper   the paper's settings (experiments/collect_paper.toml: roberta-base, batch 1000, ~4000
          steps, k = 1000, the full toy grid): for a GPU machine with a network

Examples
--------
  python -m spectral.repro --scale quick                      # into runs/repro-quick
  python -m spectral.repro --scale quick --figures figures/   # also copy the figures into the repo
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .errors import SpectralError, cli_entry

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

SCALES = {
    "quick": {
        "collect": [],  # the defaults are the quick scale
        "k": 100,
        "fit_range": (1, 100),
        "toy": ["--steps", "10", "20", "40", "80", "160", "320", "640", "--seeds", "3"],
    },
    "paper": {
        "collect": ["--config", str(EXPERIMENTS / "collect_paper.toml")],
        "k": 1000,
        "fit_range": (1, 500),
        "toy": [],
    },
}


def _stage(name: str, main, argv: list) -> None:
    print(f"\n== {name}: python -m spectral.{name} {' '.join(map(str, argv))}", flush=True)
    t0 = time.perf_counter()
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:  # a stage's CLI said why on stderr
        if exc.code:
            raise SpectralError(f"the {name} stage failed (exit {exc.code}); see its message above") from None
    print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def reproduce(scale: str, out: Path, figures_dir: Path | None = None, data: str | None = None) -> Path:
    from .analyse.__main__ import main as analyse_main
    from .collect.__main__ import main as collect_main
    from .report.__main__ import main as report_main
    from .retrain.__main__ import main as retrain_main
    from .toy.__main__ import main as toy_main

    plan = SCALES[scale]
    collect = ["--out", out, *plan["collect"], *(["--data", data] if data else [])]
    if (out / "manifest.json").is_file():
        collect.append("--resume")  # finished runs return at once; interrupted ones continue
    _stage("collect", collect_main, collect)
    _stage("analyse", analyse_main, [out, "--k", plan["k"]])
    _stage("toy", toy_main, ["--out", out / "toy", "--no-figure", *plan["toy"]])
    # the seed code's const mode (a_j = g0*j, understated sensitivity), for comparison with the published figure
    _stage("toy", toy_main, ["--out", out / "toy-seedcode", "--no-figure", "--modes", "const", "--seed-code-const",
                             *plan["toy"]])
    components = out / "analysis" / "clipped"
    # the paper's setting (DP, signal projected), and the same without noise: where the gradients live
    _stage("retrain", retrain_main, ["--components", components, "--scale", scale])
    _stage("retrain", retrain_main, ["--components", components, "--scale", scale, "--non-private"])
    _stage("report", report_main, [out, "--fit-range", *plan["fit_range"]])
    if figures_dir is not None:
        figures_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted((out / "figures").iterdir()):
            shutil.copy2(path, figures_dir / path.name)
        print(f"figures copied to {figures_dir}")
    return out


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m spectral.repro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="quick")
    p.add_argument("--out", type=Path, help="run directory [runs/repro-SCALE]")
    p.add_argument("--data", help="data for the collect stage (default: $SPECTRAL_DATA/sst2, else GLUE download)")
    p.add_argument("--figures", type=Path, help="also copy the figures and their data here (e.g. figures/)")
    args = p.parse_args(argv)
    out = args.out or Path("runs") / f"repro-{args.scale}"
    t0 = time.perf_counter()
    reproduce(args.scale, out, args.figures, args.data)
    print(f"\nreproduction ({args.scale}) finished in {(time.perf_counter() - t0) / 60:.1f} min: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
