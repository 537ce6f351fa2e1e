"""Study: how well a subspace from public data captures private DP gradients (Bu et al. 2024; projected DP-SGD).

The top-k subspace is estimated from non-private gradients on a small public split (the first
``--public-size`` training examples, which private retraining leaves out), exactly as
``python -m spectral.retrain --subspace-from public`` does. Then the private run's stored gradients
are measured under that projector: G_k = ‖(I − P_k^public) g‖ for every stored step, against the
private trajectory's own components (in-sample) and its held-out curve from the analyse stage.
Retraining at equal ε with and without the public projection is ``spectral.retrain`` (figure 5).

    SPECTRAL_DATA=../shared/data python experiments/public_subspace.py runs/repro-quick
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from spectral import jsonio, layout
from spectral.analyse import rlc
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.dp.config import CollectConfig
from spectral.dp.data import load_data
from spectral.errors import cli_entry
from spectral.layout import RunDir
from spectral.plotting import COLORS, MARKERS, decimal_log_ticks, new_figure, save, style
from spectral.report import fits
from spectral.retrain.run import public_subspace
from spectral.store import open as open_store


def projector_curve(store, V: np.ndarray, ks, stream: str = "clipped") -> pd.DataFrame:
    """Summary (per k: mean, rms, max, quantiles) of G_k of every stored gradient under span(V[:, :k])."""
    M = TrajectoryMatrix(store, stream)
    scores = M.matmat(V)
    sq, _ = M.norms()
    return rlc.summarize(rlc.residual_norms(scores, sq, ks))


def summary_table(curves: dict) -> pd.DataFrame:
    """Per projector: rms G_0, G_k at the grid points nearest below 10 and 100, the energy fraction
    left outside the top ~10 directions, and the RLC exponent c with its interval and fitted k range."""
    rows = []
    for label, c in curves.items():
        f = fits.rlc_fit(c)
        g = c.set_index("k").rms
        at = lambda k: float(g.loc[g.index[g.index <= k].max()])  # noqa: E731
        rows.append(
            {
                "projector": label,
                "G_0": at(0),
                "G_10": at(10),
                "G_100": at(100),
                "energy_outside_top10": (at(10) / at(0)) ** 2,
                "c": f["c"],
                "c_low": f["c_low"],
                "c_high": f["c_high"],
                "fit_k_min": f["k_range"][0],
                "fit_k_max": f["k_range"][1],
            }
        )
    return pd.DataFrame(rows)


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="an analysed collect run")
    p.add_argument(
        "--public-size",
        type=int,
        nargs="+",
        default=[700, 2000, 6700],
        help="public examples (default ~1%%, 3%%, 10%% of SST-2)",
    )
    p.add_argument("--public-steps", type=int, default=100)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--out", type=Path)
    p.add_argument("--redraw", action="store_true", help="table and figure from the saved curves, no recomputing")
    args = p.parse_args(argv)
    store, run = open_store(args.run_dir), RunDir(args.run_dir)
    analysis = run.analysis("clipped")
    out = args.out or args.run_dir / "studies" / "public"
    out.mkdir(parents=True, exist_ok=True)
    if args.redraw:  # the settings the curves were computed with, not this call's defaults
        saved, record = (
            pd.read_csv(out / "public_subspace_curves.csv"),
            json.loads((out / "public_subspace.json").read_text()),
        )
        curves = {label: c.drop(columns="projector") for label, c in saved.groupby("projector", sort=False)}
        return write(curves, out, record["n"], record["public_steps"], record["k"])
    cfg = CollectConfig.from_dict(store.manifest["config"])
    head = store.attachment("head") if "head" in store.manifest.get("attachments", []) else None
    train, dev, _ = load_data(cfg.data, cfg.text_column, cfg.label_column, cfg.seed)
    ks = rlc.k_grid(args.k)

    # the in-sample curve only to rlc.in_sample_readable(n), as the report reads it: past it finite n bends it to 0
    last = {layout.RLC_IN_SAMPLE: rlc.in_sample_readable(store.n_steps), layout.RLC_HELD_OUT: np.inf}
    curves = {}
    for label, name in (("private, in-sample", layout.RLC_IN_SAMPLE), ("private, held-out", layout.RLC_HELD_OUT)):
        if (analysis / name).is_file():
            curve = pd.read_csv(analysis / name)
            curves[label] = curve[curve.k <= last[name]]
    for size in args.public_size:
        sub = public_subspace(
            replace(cfg, eval_every=0), train.rows(0, size), dev.head(0), args.k, args.public_steps, True, head
        )
        curves[f"public projector, {size} examples"] = projector_curve(store, sub.V.numpy(), ks)
    write(curves, out, store.n_steps, args.public_steps, args.k)


def write(curves: dict, out: Path, n: int, public_steps: int, k: int) -> None:
    """The table (printed and saved as CSV/JSON, with the n stored steps) and the figure with its curves."""
    table = summary_table(curves)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    table.to_csv(out / "public_subspace.csv", index=False)
    record = {"public_steps": public_steps, "k": k, "n": n, "table": table.to_dict(orient="records")}
    (out / "public_subspace.json").write_text(jsonio.dumps(record, indent=1))
    print("figure:", plot(curves, out / "public_subspace")[0])


def plot(curves: dict, stem) -> list:
    """G_k of the private steps outside each projector's top-k subspace; the curves are saved beside it
    (``<stem>_curves.csv``, from which ``plot`` redraws: ``{label: frame for label, frame in
    curves_csv.groupby("projector")}``)."""
    with style():
        fig, ax = new_figure()
        for i, (label, c) in enumerate(curves.items()):
            c = c[c.k >= 1]
            ax.loglog(c.k, c.rms, marker=MARKERS[i % len(MARKERS)], ms=3, color=COLORS[i], label=label)
        decimal_log_ticks(ax.yaxis)
        ax.set_xlabel("subspace dimension k")
        ax.set_ylabel("rms over stored private steps of ‖(I − P_k) g‖")
        ax.set_title("Private gradients outside a public vs private top-k subspace")
        ax.legend(loc="lower left")
    tables = [c.assign(projector=label) for label, c in curves.items()]
    return save(fig, stem, {"_curves": pd.concat(tables, ignore_index=True)})


if __name__ == "__main__":
    sys.exit(main())
