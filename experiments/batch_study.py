"""The batch question measured on one trajectory: a ladder of probe batches at every step.

    python experiments/batch_study.py runs/ladder-s1 runs/ladder-s2 --out figures/batch

Each run is collected with ``--streams clipped sampling --probe-batches 128,256,512,1000``: at every step
the training row (batch B̄ = 128, Poisson), the halves' difference Δ (so H ± Δ are the same steps at batch
64), and the means of nested prefixes of one extra sample of 1,000 examples at the same parameters
(:mod:`spectral.dp.probes`). Every rung is a trajectory of the same n steps, so the rungs differ only in
how much sampling noise each row carries.

Per run and rung: the slope of σ_k (ranks 1…n, positive eigenvalues), the top-10 energy share, the
held-out exponent c of G_k (rms and max; components fitted on the first half, measured on the second),
the in-sample c (rms and max, read to k = n/2 as the report does), and the rung's mean row norm.

The prediction, validated on the ladder: per rank, λ_k(B) = a_k + b_k/B fitted by least squares on the
rungs 128, 256, 512 and compared with the measured rung 1000, rank by rank (relative error, max and
median per rank range) and per rank range's energy. For comparison, the two predictions from the run
alone: ``halves`` (the same line through 64 and 128) and ``steps`` (H Hᵀ − f diag‖Δ‖²).

The mean-gradient path ("B = ∞"): a_k, the per-rank line through all four probe rungs at 1/B = 0; its
error is estimated by the same fit's error at 1,000 when 1,000 is left out (the same distance in 1/B:
1/1000 against 1/512 − 1/1000). G_k at ∞: for a fixed subspace the held-out mean square G_k² is linear in
1/B (the signal's part plus the noise's trace outside it over B), so it is fitted per k through the
rungs' held-out rms curves and its exponent c read off; validated by predicting the 1,000 curve from the
other rungs.

Everything comes from one Gram pass over the six streams (checkpointed in RUN/studies/batch). Writes
``--out``: batch_ladder.csv (rungs), batch_validation.csv (prediction errors), batch_spectra.csv
(eigenvalues per rung, and at ∞), batch_study.json, fig7_batch.png with its data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spectral import jsonio
from spectral.analyse import batch, rlc
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.errors import SpectralError, cli_entry
from spectral.layout import RunDir, probe_sizes, probe_stream
from spectral.plotting import COLORS, new_figure, save, style
from spectral.report import fits
from spectral.store import open as open_store

PAPER_BATCH = 1000
RANK_RANGES = ((1, 10), (11, 100), (101, 250))


def joint_gram(run: RunDir, store, streams) -> np.ndarray:
    """The Gram matrix of all ``streams`` stacked (len(streams)·n square), from one pass (checkpointed)."""
    out = run.root / "studies" / "batch"
    out.mkdir(parents=True, exist_ok=True)
    return TrajectoryMatrix(store, tuple(streams), progress=True).gram(checkpoint=out / "gram")


def describe(G: np.ndarray) -> tuple[dict, np.ndarray, pd.DataFrame]:
    """(numbers of the rung, its eigenvalues descending, its held-out curve)."""
    n = len(G)
    theta = np.linalg.eigvalsh(G)[::-1]
    positive = theta[theta > 0]
    slope = fits.spectrum_fit(np.sqrt(positive), (1, len(positive)))
    held, _ = rlc.held_out_from_gram(G, n // 2, split="half")
    held = rlc.summarize(held)
    inside = rlc.in_sample_from_gram(G)[1]
    read_to = rlc.in_sample_readable(n)
    c = {f"c_held_{s}": fits.rlc_fit(held, s, (1, n // 2))["c"] for s in ("rms", "max")}
    c.update({f"c_in_{s}": fits.rlc_fit(inside, s, (1, read_to))["c"] for s in ("rms", "max")})
    row = {
        "n": n,
        "slope": slope["slope"],
        "slope_ci": [slope["ci_low"], slope["ci_high"]],
        "top10_energy": float(theta[:10].sum() / np.trace(G)),
        **c,
        "row_norm": float(np.sqrt(np.clip(np.diag(G), 0, None)).mean()),
        "mean_sq_norm": float(np.trace(G) / n),
    }
    return row, theta, held


def exponent_line(batches, values) -> tuple[float, float]:
    """(value at B = inf, slope in 1/B) of a least-squares line in 1/B."""
    a, b = batch.linear_in_inverse_batch(batches, np.asarray(values)[:, None])
    return float(a[0]), float(b[0])


def study_run(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    store = open_store(run.store)
    sizes = probe_sizes(store.streams)
    if batch.NOISE_STREAM not in store.streams or sizes[-1:] != [PAPER_BATCH] or len(sizes) < 3:
        raise SpectralError(
            f"{run_dir}: collect with --streams clipped sampling --probe-batches 128,256,512,1000 for this study"
        )
    streams = ["clipped", batch.NOISE_STREAM, *map(probe_stream, sizes)]
    n = store.n_steps
    K = joint_gram(run, store, streams)

    def block(i):
        return K[i * n : (i + 1) * n, i * n : (i + 1) * n]

    dp = store.manifest["dp"]
    B_run, q = float(dp["batch_size"]), float(dp["sample_rate"])
    KH, KD, KX = block(0), block(1), K[:n, n : 2 * n]
    rungs = {"half batch (H + Δ)": (B_run / 2, KH + KD + KX + KX.T), "run (clipped)": (B_run, KH)}
    rungs.update({f"probe {m}": (float(m), block(2 + j)) for j, m in enumerate(sizes)})
    rows, spectra, held = [], {}, {}
    for label, (b, G) in rungs.items():
        row, theta, curve = describe(G)
        rows.append({"run": run.root.name, "rung": label, "batch": b, **row})
        spectra[label], held[label] = theta, curve

    probe_b = np.array(sizes, dtype=float)
    probe_eigs = np.array([spectra[f"probe {m}"] for m in sizes])
    top = probe_eigs[-1]
    a3, b3 = batch.linear_in_inverse_batch(probe_b[:-1], probe_eigs[:-1])
    run_eigs, half_eigs = batch.half_batch_eigenvalues(K[: 2 * n, : 2 * n], n)
    f = batch.factor(B_run, PAPER_BATCH, q)
    predictions = {
        "ladder (probes 128-512, per rank linear in 1/B)": a3 + b3 / PAPER_BATCH,
        "halves (run's 64 and 128, per rank linear in 1/B)": run_eigs - f * (half_eigs - run_eigs),
        "steps (H Hᵀ − f diag‖Δ‖²)": np.linalg.eigvalsh(batch.steps_gram(K[: 2 * n, : 2 * n], n, f))[::-1],
        "no correction (the run's own spectrum)": run_eigs,
    }
    validation = [
        {"run": run.root.name, "estimator": name, "target": f"probe {PAPER_BATCH}", "ranks": ranks,
         "max_rel_error": e["max"], "median_rel_error": e["median"], "energy_rel_error": e["energy"]}
        for name, pred in predictions.items()
        for ranks, e in batch.rank_range_errors(np.sort(pred)[::-1], top, [*RANK_RANGES, (1, 100)]).items()
    ]  # fmt: skip
    # B = inf: per-rank lines through all probe rungs (the same extrapolation distance in 1/B, 1/1000, as
    # predicting 1000 from 128…512, 1/512 − 1/1000: the leave-top-out errors above are its error)
    a_inf, _ = batch.linear_in_inverse_batch(probe_b, probe_eigs)
    positive = np.sort(a_inf[a_inf > 0])[::-1]
    inf_slope = fits.spectrum_fit(np.sqrt(positive), (1, len(positive)))
    inf = {
        "run": run.root.name,
        "negative_eigenvalues": int((a_inf < 0).sum()),
        "slope": inf_slope["slope"],
        "fit_range": inf_slope["range"],
        "top10_energy": float(positive[:10].sum() / a_inf.sum()),
        "mean_sq_norm": float(a_inf.sum() / n),
    }
    # G_k at inf: for a fixed subspace the held-out mean square G_k² is linear in 1/B (signal + trace of
    # the noise outside it / B); fitted per k through the rungs' held-out rms curves, validated the same way
    curves = [held[f"probe {m}"].set_index("k")["rms"] ** 2 for m in sizes]
    ks = curves[0].index.intersection(curves[-1].index)
    sq = np.array([c.loc[ks].to_numpy() for c in curves])
    a_k, _ = batch.linear_in_inverse_batch(probe_b, sq)
    a3k, b3k = batch.linear_in_inverse_batch(probe_b[:-1], sq[:-1])
    at_top = np.sqrt(np.clip(a3k + b3k / PAPER_BATCH, 0, None))
    measured_top = np.sqrt(sq[-1])

    def c_of(values):
        keep = (ks >= 1) & (values > 0)
        return float(-fits.log_log_fit(np.asarray(ks)[keep], values[keep])["slope"])

    inf.update(
        c_held_rms=c_of(np.sqrt(np.clip(a_k, 0, None))),
        c_held_rms_predicted_at_top=c_of(at_top),
        c_held_rms_measured_at_top=c_of(measured_top),
        g_k_leave_top_out_max_rel_error=float(np.max(np.abs(at_top - measured_top) / measured_top)),
        g_k_negative_at_inf=int((a_k < 0).sum()),
    )
    return {
        "rows": rows,
        "validation": validation,
        "inf": inf,
        "spectra": spectra,
        "inf_spectrum": np.sort(a_inf)[::-1],
        "held": held,
        "n": n,
    }


def figure(results: list, out: Path) -> None:
    table = pd.DataFrame([r for res in results for r in res["rows"]])
    with style(**{"figure.figsize": (11.5, 4.4)}):
        fig, (a, b) = new_figure(1, 2)
        for i, (key, label) in enumerate(
            [("c_held_rms", "held-out c (rms)"), ("c_held_max", "held-out c (max)"), ("c_in_rms", "in-sample c (rms)")]
        ):
            for j, res in enumerate(results):
                t = pd.DataFrame(res["rows"]).sort_values("batch")
                t = t[t.rung != "run (clipped)"]
                a.semilogx(t.batch, t[key], "o-" if j == 0 else "s--", color=COLORS[i], ms=4, lw=1.2,
                           label=f"{label}, {res['inf']['run']}")  # fmt: skip
        for j, res in enumerate(results):
            t = pd.DataFrame(res["rows"]).sort_values("batch")
            t = t[t.rung != "run (clipped)"]
            a.semilogx(t.batch, t.top10_energy, "o-" if j == 0 else "s--", color=COLORS[3], ms=4, lw=1.2,
                       label=f"top-10 energy, {res['inf']['run']}")  # fmt: skip
        a.axhline(0.5, color="0.4", lw=0.8, ls=":")
        a.text(70, 0.51, "c = 1/2 (dimension-free)", fontsize=7, color="0.3")
        a.axvline(PAPER_BATCH, color="0.5", lw=0.8, ls="--")
        a.text(PAPER_BATCH * 1.03, 0.02, "paper's batch", fontsize=7, color="0.3", rotation=90)
        a.set_xlabel("batch B (rows: means of B clipped per-example gradients)")
        a.set_ylabel("exponent c / energy share")
        a.set_title("G_k exponent and top-10 energy against the batch")
        a.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, 0.93))
        res = results[0]
        for i, (label, theta) in enumerate(res["spectra"].items()):
            keep = theta > 0
            k = np.arange(1, len(theta) + 1)
            b.loglog(k[keep], np.sqrt(theta[keep] / res["n"]), color=COLORS[i % 10], lw=1.2, label=label)
        lam = res["inf_spectrum"]
        k = np.arange(1, len(lam) + 1)
        negative = int((lam <= 0).sum())
        b.loglog(k[lam > 0], np.sqrt(lam[lam > 0] / res["n"]), "k--", lw=1.2,
                 label=f"B = ∞ (per-rank line in 1/B; {negative} ranks ≤ 0 not drawn)")  # fmt: skip
        b.set_xlabel("rank k")
        b.set_ylabel("σ_k / √n")
        b.set_title(f"spectrum of each rung ({res['inf']['run']})")
        b.legend(fontsize=6.5, loc="lower left")
        fig.suptitle("One trajectory, five batches: how much of the spectrum is the batch's?")
    save(fig, out / "fig7_batch", {"": table})


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", help="runs collected with --probe-batches 128,256,512,1000")
    p.add_argument("--out", type=Path, help="default: the first run's studies/batch")
    args = p.parse_args(argv)
    out = args.out or RunDir(args.run_dirs[0]).root / "studies" / "batch"
    out.mkdir(parents=True, exist_ok=True)
    results = [study_run(r) for r in args.run_dirs]
    ladder = pd.DataFrame([r for res in results for r in res["rows"]])
    validation = pd.DataFrame([v for res in results for v in res["validation"]])
    spectra = pd.DataFrame(
        [
            {"run": res["inf"]["run"], "rung": label, "rank": k + 1, "eigenvalue": float(v)}
            for res in results
            for label, theta in [*res["spectra"].items(), ("B = inf (per-rank line)", res["inf_spectrum"])]
            for k, v in enumerate(theta)
        ]
    )
    ladder.to_csv(out / "batch_ladder.csv", index=False)
    validation.to_csv(out / "batch_validation.csv", index=False)
    spectra.to_csv(out / "batch_spectra.csv", index=False)
    held = pd.concat(
        [c.assign(run=res["inf"]["run"], rung=label) for res in results for label, c in res["held"].items()]
    )
    held.to_csv(out / "batch_held_out.csv", index=False)
    (out / "batch_study.json").write_text(
        jsonio.dumps({"inf": [res["inf"] for res in results], "rank_ranges": RANK_RANGES}, indent=1)
    )
    figure(results, out)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        cols = ["run", "rung", "batch", "slope", "top10_energy", "c_held_rms", "c_held_max", "c_in_rms", "c_in_max"]
        print(ladder[cols + ["row_norm"]].round(4).to_string(index=False))
        print(validation.round(3).to_string(index=False))
        print(pd.DataFrame([res["inf"] for res in results]).round(4).T.to_string())
    print(f"written to {out}")


if __name__ == "__main__":
    main()
