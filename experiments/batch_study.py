"""Is the flat tail the gradients' or the batch's? Measured spectra and G_k at the run's batch, the
same steps predicted at larger batches from the ``sampling`` stream, and runs collected at a larger
batch to check the prediction against.

    python experiments/batch_study.py runs/b128 --check runs/b512 [--batches 512 1000 inf]

For each run given (collected with ``--streams clipped sampling``) and each part of it (all steps, and
the first n' steps where n' is the check run's length, so the comparison is at equal n), the table has:
the fitted slope of σ_k over 1…min(500, n), the top-10 energy share, and the held-out exponent c of
G_k (rms and max, components fitted on the first half), measured (the run's batch) and predicted at each
batch by :mod:`spectral.analyse.batch` (``steps`` estimator: H Hᵀ − f diag(‖Δ_t‖²)), with the
prediction's resolution. A model-free cross-check: averages of m consecutive rows (m = 2, 4, 8), whose
sampling noise is m times smaller (and whose signal is smoothed over m steps), from the same Gram matrix.

Everything comes from one Gram pass over [H; Δ] per run (the analyse stage's checkpoint is reused when
``analyse --batch-size`` ran). Writes studies/batch/ (batch_study.csv, .json, figure with its data).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from spectral import jsonio
from spectral.analyse import batch, rlc
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.errors import SpectralError, cli_entry
from spectral.layout import RunDir
from spectral.plotting import COLORS, new_figure, save, style
from spectral.report import fits
from spectral.store import open as open_store


def stacked_gram(run: RunDir, store) -> np.ndarray:
    """K = [H; Δ][H; Δ]ᵀ (2n × 2n), from the prediction's checkpoint when ``analyse --batch-size`` ran."""
    for candidate in sorted((run.root / "analysis").glob("clipped@B*/checkpoints/gram.npy")):
        M = TrajectoryMatrix(store, ("clipped", batch.NOISE_STREAM), progress=True)
        return M.gram(checkpoint=candidate.with_suffix(""))
    return TrajectoryMatrix(store, ("clipped", batch.NOISE_STREAM), progress=True).gram()


def describe(G: np.ndarray, fit_range=(1, 500)) -> tuple[dict, np.ndarray, pd.DataFrame]:
    """Slope, top-10 energy and held-out c (rms, max) of the trajectory whose Gram matrix is G."""
    n = len(G)
    theta = np.sort(np.linalg.eigvalsh(G))[::-1]
    positive = theta[theta > 0]
    sv = np.sqrt(positive)
    hi = min(fit_range[1], len(sv))
    slope = fits.spectrum_fit(sv, (fit_range[0], hi))
    held, _ = rlc.held_out_from_gram(G, n // 2, split="half")
    summary = rlc.summarize(held)
    k_max = summary.k.max()
    rms, mx = fits.rlc_fit(summary, "rms", (1, k_max)), fits.rlc_fit(summary, "max", (1, k_max))
    row = {
        "n": n,
        "slope": slope["slope"],
        "slope_ci": [slope["ci_low"], slope["ci_high"]],
        "fit_range": slope["range"],
        "top10_energy": float(theta[:10].sum() / np.trace(G)),
        "c_rms": rms["c"],
        "c_rms_ci": [rms["c_low"], rms["c_high"]],
        "c_max": mx["c"],
        "c_max_ci": [mx["c_low"], mx["c_high"]],
        "negative_eigenvalues": int((theta < 0).sum()),
    }
    return row, theta, summary


def averaged(G: np.ndarray, m: int) -> np.ndarray:
    """Gram matrix of the means of m consecutive rows (the last incomplete group dropped)."""
    groups = len(G) // m
    A = np.kron(np.eye(groups), np.full((1, m), 1.0 / m))
    return A @ G[: groups * m, : groups * m] @ A.T


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run collected with --streams clipped sampling")
    p.add_argument("--check", type=Path, nargs="*", default=[], help="runs at larger batches (same recipe)")
    p.add_argument("--batches", nargs="+", default=["512", "1000", "inf"], help="batch sizes to predict")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    batches = [math.inf if b == "inf" else float(b) for b in args.batches]
    main_run = RunDir(args.run_dir)
    out = args.out or main_run.root / "studies" / "batch"
    out.mkdir(parents=True, exist_ok=True)

    rows, curves, spectra = [], {}, {}

    def record(label, run_label, G, kind, b, resolution=None):
        row, theta, summary = describe(G)
        rows.append(
            {
                "run": run_label,
                "part": label,
                "batch": "inf" if math.isinf(b) else b,
                "kind": kind,
                "resolution": resolution,
                **row,
            }
        )
        key = f"{run_label} {label}: {kind} at {'inf' if math.isinf(b) else int(b)}"
        spectra[key] = theta / len(G)  # σ_k² / n: runs of different length compare
        curves[key] = summary

    for run_dir in [args.run_dir, *args.check]:
        run = RunDir(run_dir)
        store = open_store(run.store)
        if batch.NOISE_STREAM not in store.streams:
            raise SpectralError(f"{run_dir} has no sampling stream (collect with --streams clipped sampling)")
        dp = store.manifest["dp"]
        B, q, n = float(dp["batch_size"]), float(dp["sample_rate"]), store.n_steps
        K = stacked_gram(run, store)
        parts = {"all": np.arange(n)}
        if run_dir == args.run_dir:
            for check in args.check:
                m = open_store(RunDir(check).store).n_steps
                if m < n:
                    parts[f"first {m}"] = np.arange(m)
        for label, part in parts.items():
            idx = np.r_[part, part + n]
            Kp = K[np.ix_(idx, idx)]
            npart = len(part)
            record(label, run.root.name, Kp[:npart, :npart], "measured", B)
            for b in batches:
                if b <= B:
                    continue
                f = batch.factor(B, b, q)
                record(
                    label, run.root.name, batch.steps_gram(Kp, npart, f), "predicted", b, batch.resolution(Kp, npart, f)
                )
            if run_dir == args.run_dir and label == "all":
                for m in (2, 4, 8):
                    record(f"means of {m}", run.root.name, averaged(Kp[:npart, :npart], m), "averaged", B * m)

    table = pd.DataFrame(rows)
    table.to_csv(out / "batch_study.csv", index=False)
    (out / "batch_study.json").write_text(jsonio.dumps(rows, indent=1))
    with style(**{"figure.figsize": (11.0, 4.2)}):
        fig, (a, b) = new_figure(1, 2)
        for i, (key, lam) in enumerate(spectra.items()):
            if "averaged" in key:
                continue
            ls = "-" if "measured" in key else "--"
            k = np.arange(1, len(lam) + 1)
            keep = lam > 0
            a.loglog(k[keep], np.sqrt(lam[keep]), ls, color=COLORS[i % 10], label=key, lw=1.2)
            c = curves[key]
            b.loglog(c.k[c.k >= 1], c["rms"][c.k >= 1], ls, color=COLORS[i % 10], label=key, lw=1.2)
        a.set_xlabel("rank k")
        a.set_ylabel("σ_k / √n")
        a.set_title("spectrum: measured (solid) and predicted (dashed)")
        b.set_xlabel("k")
        b.set_ylabel("held-out G_k (rms)")
        b.set_title("held-out G_k, components from the first half")
        a.legend(fontsize=6.5, loc="lower left")
        fig.suptitle("Is the flat tail the gradients' or the batch's?")
    save(fig, out / "batch_study", {"": table})
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(
            table[["run", "part", "kind", "batch", "n", "slope", "top10_energy", "c_rms", "c_max", "resolution"]].round(
                3
            )
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
