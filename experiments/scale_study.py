"""Study: does the spectrum's slope and the G_k exponent depend on how many steps are stored?

For nested parts of one trajectory (the first 250, the first 500, all steps, and all but the first 300,
or other --parts), the spectrum of HᵀH restricted to those rows, its power-law fit over ranks 1…500 (or
as many as the part has), and the in-sample and held-out G_k curves with their exponent c.

Everything comes from the n x n Gram matrix G = HHᵀ of the whole trajectory, read once (the analyse
stage's Gram checkpoint is reused): a part's nonzero spectrum is that of G[rows, rows]; its in-sample
residuals are ‖g_t‖² − Σ_{j≤k} (U_tj σ_j)²; held-out scores of rows B under components fitted on rows A
are G[B, A] U_A Σ_A^{-1}. So the study costs no pass over the d-dimensional data beyond the Gram.

    python experiments/scale_study.py runs/repro-cpu        # writes runs/repro-cpu/studies/scale/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from spectral.analyse import rlc
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.errors import SpectralError, cli_entry
from spectral.layout import RunDir
from spectral.plotting import COLORS, MARKERS, new_figure, save, style
from spectral.report import fits
from spectral.store import open as open_store


def parts_of(n: int, specs) -> dict:
    """``first:N`` (the first N steps), ``drop:N`` (all but the first N), ``all``."""
    parts = {}
    for spec in specs:
        kind, _, value = spec.partition(":")
        if kind == "all":
            parts["all"] = np.arange(n)
        elif kind == "first" and 1 < int(value) <= n:
            parts[f"first {value}"] = np.arange(int(value))
        elif kind == "drop" and 0 <= int(value) < n - 1:
            parts[f"steps {value}…{n - 1}"] = np.arange(int(value), n)
        elif kind not in ("first", "drop", "all"):
            raise SpectralError(f"unknown part {spec!r}; use first:N, drop:N or all")
    return parts


def eig_desc(S: np.ndarray, k: int):
    w, U = np.linalg.eigh(S)
    return w[::-1][:k], U[:, ::-1][:, :k]


def in_sample_curve(G: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(eigenvalues, G_k summary) of the part ``rows``, from the Gram matrix alone."""
    return rlc.in_sample_from_gram(G[np.ix_(rows, rows)], k)


def held_out_curve(G: np.ndarray, rows: np.ndarray, k: int) -> pd.DataFrame:
    """G_k of the second half of ``rows`` under the top-k components of the first half."""
    fit, test = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    k = min(k, len(fit))
    lam, U = eig_desc(G[np.ix_(fit, fit)], k)
    keep = lam > lam[0] * 1e-12
    scores = G[np.ix_(test, fit)] @ (U[:, keep] / np.sqrt(lam[keep]))
    ks = rlc.k_grid(int(keep.sum()))
    return rlc.summarize(rlc.residual_norms(scores, np.diag(G)[test].copy(), ks))


def fit_row(label: str, n: int, sv: np.ndarray, inside: pd.DataFrame, held: pd.DataFrame, fit_range, top10) -> dict:
    """The table row of one part: the spectrum's slope, and c of the in-sample curve read to n/2 (past it:
    the collapse at k = n, overfitting) and of the held-out curve."""
    spec = fits.spectrum_fit(sv, fit_range)
    inside = inside[(inside.k <= rlc.in_sample_readable(n))]
    c_in, c_out = fits.rlc_fit(inside), fits.rlc_fit(held)
    return {
        "part": label,
        "n": n,
        "fit_range": f"{spec['range'][0]}-{spec['range'][1]}",
        "slope": spec["slope"],
        "slope_ci_low": spec["ci_low"],
        "slope_ci_high": spec["ci_high"],
        "r2": spec["r2"],
        "c_in_sample": c_in["c"],
        "c_in_low": c_in["c_low"],
        "c_in_high": c_in["c_high"],
        "c_in_k_range": f"{c_in['k_range'][0]}-{c_in['k_range'][1]}",
        "c_held_out": c_out["c"],
        "c_out_low": c_out["c_low"],
        "c_out_high": c_out["c_high"],
        "energy_top10": top10,
    }


def compute(run_dir: Path, parts, k: int, fit_range, stream: str):
    """(table, spectra, curves) from the run's Gram matrix."""
    run = RunDir(run_dir)
    store = open_store(run.store)
    G = TrajectoryMatrix(store, stream, progress=True).gram(checkpoint=run.analysis(stream) / "checkpoints" / "gram")
    rows, spectra, curves = [], [], []
    for label, part in parts_of(store.n_steps, parts).items():
        lam, inside = in_sample_curve(G, part, min(k, len(part)))
        held = held_out_curve(G, part, min(k, len(part)))
        sv = np.sqrt(np.clip(lam, 0, None))
        inside = inside[inside.k <= rlc.in_sample_readable(len(part))]  # past n/2: the collapse at k = n
        top10 = float(lam[:10].sum() / np.trace(G[np.ix_(part, part)]))
        rows.append(fit_row(label, len(part), sv, inside, held, fit_range, top10))
        spectra.append(pd.DataFrame({"part": label, "rank": np.arange(1, len(sv) + 1), "singular_value": sv}))
        curves += [inside.assign(part=label, curve="in-sample"), held.assign(part=label, curve="held-out")]
    return pd.DataFrame(rows), pd.concat(spectra, ignore_index=True), pd.concat(curves, ignore_index=True)


def redraw(out: Path, fit_range):
    """(table, spectra, curves) refitted from the study's saved data in ``out`` (no run needed)."""
    old = pd.read_csv(out / "scale_study.csv")
    spectra, curves = pd.read_csv(out / "scale_study_spectra.csv"), pd.read_csv(out / "scale_study_curves.csv")
    rows = []
    for _, r in old.iterrows():
        c = curves[curves.part == r.part]
        sv = spectra[spectra.part == r.part].sort_values("rank").singular_value.to_numpy()
        inside, held = c[c.curve == "in-sample"].drop(columns=["part", "curve"]), c[c.curve == "held-out"]
        rows.append(
            fit_row(r.part, int(r.n), sv, inside, held.drop(columns=["part", "curve"]), fit_range, r.energy_top10)
        )
    cut = [c[(c.curve != "in-sample") | (c.k <= rlc.in_sample_readable(int(old.set_index("part").n[p])))]
           for p, c in curves.groupby("part", sort=False)]  # fmt: skip
    return pd.DataFrame(rows), spectra, pd.concat(cut, ignore_index=True)


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, nargs="?", help="a collect run (analysed: its Gram checkpoint is reused)")
    p.add_argument("--parts", nargs="+", default=["first:250", "first:500", "all", "drop:300"])
    p.add_argument("--k", type=int, default=1000, help="components per part (at most its number of steps)")
    p.add_argument("--fit-range", type=int, nargs=2, default=(1, 500))
    p.add_argument("--stream", default="clipped")
    p.add_argument("--out", type=Path)
    p.add_argument("--redraw", action="store_true", help="refit and redraw from the saved data in --out (no run)")
    args = p.parse_args(argv)
    if args.redraw:
        if args.out is None:
            raise SpectralError("--redraw needs --out, the directory of a saved scale study")
        out = args.out
        table, spectra, curves = redraw(out, args.fit_range)
    else:
        if args.run_dir is None:
            raise SpectralError("give a run directory (or --redraw --out DIR)")
        out = args.out or RunDir(args.run_dir).root / "studies" / "scale"
        out.mkdir(parents=True, exist_ok=True)
        table, spectra, curves = compute(args.run_dir, args.parts, args.k, args.fit_range, args.stream)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    draw(table, spectra, curves, out, args.fit_range)


def draw(table, spectra, curves, out: Path, fit_range) -> None:
    with style(**{"figure.figsize": (10.0, 4.0)}):
        fig, (a, b) = new_figure(1, 2)
        for i, (label, sp) in enumerate(spectra.groupby("part", sort=False)):
            n = len(sp)  # σ_k/√n: parts of different length compare
            a.loglog(sp["rank"], sp.singular_value / np.sqrt(n), color=COLORS[i], lw=1.2, label=f"{label} (n={n})")
            for style_, (name, c) in zip(("-", "--"), curves[curves.part == label].groupby("curve", sort=False)):
                c = c[c.k >= 1]
                b.loglog(c.k, c.rms, style_, marker=MARKERS[i], ms=2.5, color=COLORS[i], label=f"{label}, {name}")
        a.set_xlabel("rank k")
        a.set_ylabel("σ_k/√n")
        a.set_title("Spectrum by stored steps")
        a.legend(fontsize=7.5)
        b.set_xlabel("k")
        b.set_ylabel("rms G_k")
        b.set_title("G_k by stored steps (solid: in-sample to k = n/2, dashed: held-out)", fontsize=9)
        b.legend(fontsize=6.5, ncol=2)
    table.to_csv(out / "scale_study.csv", index=False)
    (out / "scale_study.json").write_text(
        json.dumps({"table": table.to_dict(orient="records"), "fit_range": list(fit_range)}, indent=1)
    )
    paths = save(fig, out / "scale_study", {"_spectra": spectra, "_curves": curves})
    print("figure:", paths[0])


if __name__ == "__main__":
    sys.exit(main())
