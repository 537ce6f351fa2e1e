"""``python -m spectral.repro --scale quick|cpu|paper``: the paper's figures end to end.

collect → analyse → toy → retrain → report, each stage called as a function with its config, every
intermediate result on disk in one run directory (see :mod:`spectral.layout`), so a rerun continues
where it stopped (collect resumes, analyse reuses its Gram checkpoint, the toy grid and retraining
skip finished parts).

  tiny    every stage in seconds on a small grid: for tests and a first look (with --model, e.g. a
          small local model)
  quick   the embedded default (all-MiniLM-L6-v2, SST-2 from $SPECTRAL_DATA), 300 DP steps,
          k = 100, a reduced toy grid; well under 30 minutes on 2 CPU cores
  cpu     the CPU-faithful run (experiments/collect_cpu.toml: the paper's recipe, 1000 steps of
          batch 128, DP learns), k = min(1000, n), fit range 1…500, the paper's toy grid widened below
          T = 10, DP retraining at ranks 10/20/100 and full with 3 seeds (100 steps each); about 2.5 hours
          on 2 CPU cores
  paper   the paper's settings (experiments/collect_paper.toml: roberta-base, prompt objective,
          batch 1000, ~4000 steps, k = 1000, the full toy grid): for a GPU machine with a network

Examples
--------
  python -m spectral.repro --scale quick                      # into runs/repro-quick
  python -m spectral.repro --scale cpu --figures figures/     # also copy the figures into the repo
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from . import cli, configs
from .analyse import AnalyseConfig, analyse
from .collect import CollectConfig, collect
from .errors import cli_entry
from .layout import RunDir
from .report import ReportConfig, report
from .retrain import RetrainConfig, retrain
from .toy import ToyConfig, toy
from .toy.grid import PAPER_STEPS

QUICK_TOY = dict(steps=(10, 20, 40, 80, 160, 320, 640), seeds=(0, 1, 2))
# the paper's toy grid with T = 1, 2, 5 added: on the paper's grid several modes choose T = 10, its edge
WIDENED_TOY = dict(steps=(1, 2, 5) + PAPER_STEPS)


def _toml(name: str) -> dict:
    """A scale's collect settings, shipped with the package (spectral/configs; experiments/ has copies)."""
    return configs.load(name)


SCALES = {
    "tiny": {  # every stage in seconds, on a model you name (--model): for tests and a first look
        "collect": {"steps": 12, "batch_size": 16, "physical_batch_size": 8, "eval_every": 6, "max_length": 32},
        "k": 6,
        "fit_range": (1, 6),
        "toy": dict(dims=(20, 200), steps=(10, 40), lrs=(0.1, 1.0), seeds=(0, 1), n_train=500, n_test=500),
        "retrain": dict(steps=2, eval_every=2, seeds=1, ranks=(2,)),
        "non_private_retrain": False,
    },
    "quick": {
        "collect": {},
        "k": 100,
        "fit_range": (1, 100),
        "toy": QUICK_TOY,
        "retrain": dict(steps=40, eval_every=10, seeds=2, ranks=(10, 100)),
        "non_private_retrain": True,
    },
    "cpu": {
        "collect": "collect_cpu.toml",
        "k": None,
        "fit_range": (1, 500),
        "toy": WIDENED_TOY,  # about 25 min on 2 cores (28 s on an H100)
        # 100 steps of batch 128 per (variant, seed): 12 runs, about 40 min on 2 cores
        "retrain": dict(steps=100, eval_every=25, seeds=3, ranks=(10, 20, 100)),
        "non_private_retrain": False,
    },
    "paper": {
        "collect": "collect_paper.toml",
        "k": 1000,
        "fit_range": (1, 500),
        "toy": {},
        "retrain": dict(steps=260, eval_every=25, seeds=3, ranks=(10, 20, 100)),
        "non_private_retrain": True,
    },
}


@contextmanager
def _stage(name: str):
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def reproduce(
    scale: str,
    out,
    figures_dir: Path | None = None,
    data: str | None = None,
    progress: bool = True,
    model: str | None = None,
    device="auto",
) -> RunDir:
    """Every stage of ``scale`` (see the module docstring) into the run directory ``out``; ``data`` and
    ``model`` replace the scale's; ``device`` (``auto``: CUDA when torch sees one) is resolved once and
    used by every stage."""
    from .device import resolve_device

    plan, run, device = SCALES[scale], RunDir(out), resolve_device(device)
    settings = _toml(plan["collect"]) if isinstance(plan["collect"], str) else dict(plan["collect"])
    chosen = {k: v for k, v in (("data", data), ("model", model)) if v}
    cfg = CollectConfig.from_dict({**settings, **chosen}).validate()
    with _stage("collect"):  # a finished run returns at once; an interrupted one continues
        collect(cfg, run.store, resume=run.has_store(), progress=progress, device=device)
    with _stage("analyse"):
        analyse(run, AnalyseConfig(k=plan["k"]), progress=progress, device=device)
    toy_config = replace(ToyConfig(), **plan["toy"]) if plan["toy"] else ToyConfig()
    with _stage("toy"):
        toy(run, toy_config, progress=progress, device=device)
        # the seed code's const mode (a_j = g0*j, understated sensitivity), beside the published figure
        toy(run, replace(toy_config, modes=("const",), seed_code_const=True), progress=progress, device=device)
    # the paper's setting (DP, signal projected), and the same without noise: where the gradients live
    with _stage("retrain"):
        retrain(run, RetrainConfig(**plan["retrain"]), progress=progress, device=device)
        if plan["non_private_retrain"]:
            settings = {"noise_multiplier": 0.0}
            retrain(run, RetrainConfig(**plan["retrain"], settings=settings), progress=progress, device=device)
    with _stage("report"):
        report(run, ReportConfig(fit_range=plan["fit_range"]))
    if figures_dir is not None:
        figures_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(run.figures.iterdir()):
            shutil.copy2(path, figures_dir / path.name)
        print(f"figures copied to {figures_dir}")
    return run


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m spectral.repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scale", choices=sorted(SCALES), default="quick")
    p.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="run directory [runs/repro-SCALE]")
    p.add_argument("--data", help="data for the collect stage (default: $SPECTRAL_DATA/sst2, else GLUE download)")
    p.add_argument("--model", help="model for the collect stage (default: the scale's)")
    p.add_argument("--figures", type=Path, help="also copy the figures and their data here (e.g. figures/)")
    cli.add_common(p)
    args = p.parse_args(argv)
    cli.use_threads(args)
    out = args.run_dir or Path("runs") / f"repro-{args.scale}"
    t0 = time.perf_counter()
    reproduce(
        args.scale, out, args.figures, args.data, progress=not args.no_progress, model=args.model, device=args.device
    )
    print(
        f"\nreproduction ({args.scale}) finished in {(time.perf_counter() - t0) / 60:.1f} min: {out}", file=sys.stderr
    )


if __name__ == "__main__":
    main()
