"""Study: LoRA's implicit noise on real DP fine-tuning gradients (Malekmohammadi & Farnadi 2024).

For stored clipped gradients ∇W of every attention weight matrix and a random frozen A (entries
N(0, 1/r)), measures the perturbation D = ∇W (AᵀA − I) that LoRA adds to full gradient descent:
its variance against the prediction (‖∇W_i‖² + ∇W_ij²)/r, its distance to a Gaussian, and the DP-SGD
noise multiplier with the same per-coordinate RMS; then the spectrum of the LoRA adapter gradients
∇B = ∇W Aᵀ against that of the full gradients.

    python experiments/lora_noise.py runs/repro-quick            # -> runs/repro-quick/studies/lora/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from spectral import jsonio
from spectral.analyse import lora, principal_components
from spectral.errors import cli_entry
from spectral.plotting import COLORS, new_figure, save, style
from spectral.report import fits
from spectral.store import open as open_store


def weight_gradients(store, steps):
    """{parameter name: (len(steps), n_out, n_in)} for every 2-D trained tensor (the adapted weights)."""
    rows = np.stack([store.rows("clipped", s, s + 1)[0] for s in steps])
    return {
        p.name: rows[:, p.offset : p.offset + p.numel].reshape(len(steps), *p.shape)
        for p in store.layout
        if len(p.shape) == 2
    }


def variance_table(grads: dict, ranks, C: float, B: float, draws: int = 5, seed: int = 0) -> pd.DataFrame:
    """Per rank: measured vs predicted RMS of D over matrices, sampled steps and ``draws`` draws of A."""
    rng = np.random.default_rng(seed)
    out = []
    for r in ranks:
        measured, predicted, stats = [], [], []
        for G_steps in grads.values():
            for G in G_steps:
                var = lora.deviation_variance(G, r)
                for _ in range(draws):  # a fresh A per draw: the variance is over the draw of A
                    D = lora.deviation(G, lora.random_a(r, G.shape[1], rng))
                    measured.append(np.mean(D**2))
                    predicted.append(np.mean(var))
                    stats.append(lora.gaussianity(D, var))
        pv = np.mean(predicted)
        out.append(
            {
                "rank": r,
                "rms_deviation": float(np.sqrt(np.mean(measured))),
                "rms_predicted": float(np.sqrt(pv)),
                "ks_statistic": float(np.mean([s["ks_statistic"] for s in stats])),
                "histogram_overlap": float(np.mean([s["histogram_overlap"] for s in stats])),
                "excess_kurtosis": float(np.mean([s["excess_kurtosis"] for s in stats])),
                "equivalent_sigma": lora.equivalent_noise_multiplier(np.array([pv]), C, B),
            }
        )
    return pd.DataFrame(out)


def adapter_spectrum(store, grads_all_steps: dict, r: int, k: int, seed: int = 0) -> np.ndarray:
    """Singular values of the trajectory of LoRA adapter gradients ∇B = ∇W Aᵀ (one A per matrix)."""
    rng = np.random.default_rng(seed)
    As = {name: lora.random_a(r, G.shape[2], rng) for name, G in grads_all_steps.items()}
    H = np.concatenate([(G @ As[name].T).reshape(len(G), -1) for name, G in grads_all_steps.items()], axis=1)
    return principal_components(H.astype(np.float32), min(k, min(H.shape) - 1)).singular_values


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    p.add_argument("--steps", type=int, default=12, help="stored steps sampled for the variance study")
    p.add_argument("--draws", type=int, default=5, help="draws of A per matrix and step")
    p.add_argument("--spectrum-rank", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    store = open_store(args.run_dir)
    out = args.out or args.run_dir / "studies" / "lora"
    out.mkdir(parents=True, exist_ok=True)
    dp = store.manifest["dp"]
    steps = np.unique(np.linspace(0, store.n_steps - 1, args.steps).astype(int))
    table = variance_table(
        weight_gradients(store, steps), args.ranks, dp["max_grad_norm"], dp["batch_size"], args.draws
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    full = principal_components(store, min(100, store.n_steps - 1)).singular_values
    adapter = adapter_spectrum(store, weight_gradients(store, np.arange(store.n_steps)), args.spectrum_rank, 100)
    fit_full, fit_lora = (fits.spectrum_fit(s, (1, min(100, len(s)))) for s in (full, adapter))
    summary = {
        "variance": table.to_dict(orient="records"),
        "spectrum_full": fit_full,
        "spectrum_lora": fit_lora,
        "lora_rank_for_spectrum": args.spectrum_rank,
        "steps_sampled": steps.tolist(),
    }
    print(
        f"spectrum slope: full {fit_full['slope']:.3f} (R2 {fit_full['r2']:.2f}), LoRA adapter (r={args.spectrum_rank}) "
        f"{fit_lora['slope']:.3f} (R2 {fit_lora['r2']:.2f})"
    )

    with style(**{"figure.figsize": (10.0, 4.0)}):
        fig, (a, b) = new_figure(1, 2)
        a.loglog(table["rank"], table.rms_deviation, "o-", color=COLORS[0], label="measured RMS of D = ∇W(AᵀA − I)")
        a.loglog(table["rank"], table.rms_predicted, "--", color=COLORS[3], label="predicted √((‖∇W_i‖² + ∇W_ij²)/r)")
        a.set_xlabel("LoRA rank r")
        a.set_ylabel("per-coordinate RMS of the perturbation")
        a.set_title("LoRA's implicit noise shrinks like r^(-1/2)")
        a.legend(loc="upper right")
        for i, (name, s) in enumerate(
            (("full gradients ∇W", full), (f"LoRA adapter gradients ∇B (r={args.spectrum_rank})", adapter))
        ):
            b.loglog(np.arange(1, len(s) + 1), s / s[0], "o", ms=3, color=COLORS[i], label=name)
        b.set_xlabel("rank k")
        b.set_ylabel("σ_k / σ_1")
        b.set_title("Spectra of the stored trajectories")
        b.legend(loc="lower left")
    table_path = out / "lora_variance.csv"
    table.to_csv(table_path, index=False)
    (out / "lora_summary.json").write_text(jsonio.dumps(summary, indent=1))
    paths = save(fig, out / "lora_noise")
    print("figure:", paths[0], "| data:", table_path, out / "lora_summary.json")


if __name__ == "__main__":
    sys.exit(main())
