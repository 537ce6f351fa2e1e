"""``python -m spectral.report RUN_DIR``: fits and all figures of a run, redrawn from saved data in seconds.

Writes RUN_DIR/figures/ (or --out): fig1_spectrum, fig2_density, fig3_rlc, fig4_dimension,
fig5_retrain, fig6_toy as PNG and PDF, each with the plotted data beside it (CSV/JSON), and
fits.json (power-law slope with intervals, fit-range table, RLC exponent c and the theory's verdict).

Examples
--------
  python -m spectral.report runs/demo
  python -m spectral.report runs/demo --fit-range 1 100 --out figures/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import cli_entry
from .run import ReportConfig, report


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m spectral.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path, help="a run directory (collect + analyse outputs)")
    p.add_argument("--stream", default="clipped", help="which analysed stream to report [clipped]")
    p.add_argument(
        "--fit-range",
        type=int,
        nargs=2,
        default=(1, 500),
        metavar=("FIRST", "LAST"),
        help="ranks of the power-law fit of the spectrum [1 500, as the paper]",
    )
    p.add_argument(
        "--g0",
        type=float,
        help="G_0 of the bound in Fig. 4 (e.g. the clipping bound C) [the measured RMS norm of the stored gradients]",
    )
    p.add_argument("--out", type=Path, help="figure directory [RUN_DIR/figures]")
    p.add_argument("--toy", type=Path, help="toy results directory [RUN_DIR/toy]")
    p.add_argument("--retrain", type=Path, help="retraining results directory [RUN_DIR/retrain]")
    args = p.parse_args(argv)
    result = report(
        args.run_dir, ReportConfig(args.stream, tuple(args.fit_range), args.g0), args.out, args.toy, args.retrain
    )
    f = result["fits"]
    if "spectrum" in f:
        s = f["spectrum"]
        implied = "n/a" if s["c_implied"] is None else f"{s['c_implied']:.2f}"
        print(
            f"spectrum: slope {s['slope']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] over k={s['range'][0]}-"
            f"{s['range'][1]}, R2 {s['r2']:.3f}; implied c = {implied} -> {s['verdict_interval']}"
        )
    for label, stats in f.get("rlc_statistics", {}).items():
        cs = ", ".join(f"{k} {v['c']:.3f}" for k, v in stats.items() if isinstance(v, dict))
        print(
            f"G_k {label}: c by statistic ({cs}); verdict from the {stats['verdict_basis']}: "
            f"{stats['verdict']} ({stats['growth']} in d)"
        )
    for label, r in f.get("dimension_factor_at_d", {}).items():
        print(
            f"bound factor at d={int(r['d']):,} ({label}): {r['rlc_factor']:.3g} vs {r['no_decay_factor']:.3g} "
            f"without decay (G_k = G_0; ratio {r['ratio_to_no_decay']:.3f}); G_k extrapolated {r['decades_beyond']:.1f} "
            "decades beyond the measured k"
        )
    for m in result["missing"]:
        print(f"not drawn: {m}")
    figs = sorted({str(p.with_suffix("")) for p in result["figures"] if p.suffix == ".png"})
    print(f"{len(figs)} figures in {Path(figs[0]).parent}" if figs else "no figures")


if __name__ == "__main__":
    main()
