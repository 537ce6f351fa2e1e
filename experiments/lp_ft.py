"""Study: DP linear probing vs fine-tuning vs LP-then-FT under one privacy budget (Ke, Hou, Fanti, Oh 2024).

Both phases start from one collect configuration (``--config``, default the learning run's ``cpu``:
the similarity head, attention q/v, DP-Adam lr 1e-3, batch 128, C = 0.1). For a total budget ε over
T steps, one noise multiplier σ is calibrated so that T steps of the subsampled Gaussian mechanism
spend ε. The first round(f·T) steps train the head only (linear probing, LP: the similarity head's
label rows, starting from the zero-shot prompt embeddings; a fresh head with ``--objective
classifier``); the remaining steps fine-tune the configuration's parameters (FT) starting from the LP
weights (``init_from``). Both phases subsample the same data with the same σ and q, so f is exactly
LP's share of the RDP budget at every order, and the accountant composes the two phases: the FT
store's final ε is the total. f = 0 is FT alone, f = 1 LP alone.

Every phase is a collect run with its gradients stored, so the spectra of LP and FT gradients
come from the analyse stage (top components, held-out G_k) and the report stage's fits.

LP uses DP-SGD: with C = 0.1 every example's head gradient (norm ~10 on the similarity head) is
clipped, so DP-Adam, which steps lr per coordinate whatever the gradient's size, moves all 768 rows'
coordinates alike, noise-dominated ones included (lr 1e-3 took the zero-shot head from 0.714 to 0.647
dev accuracy in 30 steps at ε = 8; the probes are in paper_repro.md).

    SPECTRAL_DATA=../shared/data python experiments/lp_ft.py runs/lp-ft      # CPU scale, ~1.5 h (3 budgets)

Rerunning continues: finished phases are kept, an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from spectral import cli, configs
from spectral.analyse import principal_components, rlc
from spectral.collect import CollectConfig, collect, settings_that_differ
from spectral.dp.data import load_data
from spectral.dp.privacy import compose_epsilon, plan_privacy
from spectral.errors import SpectralError, cli_entry
from spectral.layout import RunDir
from spectral.plotting import COLORS, MARKERS, new_figure, save, style
from spectral.report import fits
from spectral.store import open as open_store
from spectral.store import read_manifest

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def phase_steps(steps: int, f: float) -> tuple[int, int]:
    """(LP steps, FT steps) when a fraction ``f`` of ``steps`` goes to linear probing."""
    if not 0 <= f <= 1:
        raise SpectralError(f"the LP fraction must lie in [0, 1], got {f}")
    lp = int(round(f * steps))
    return lp, steps - lp


def budget_split(
    epsilon: float, steps: int, fractions, *, n_train: int, batch_size: int, delta=None, accountant: str = "rdp"
) -> pd.DataFrame:
    """How a total ``epsilon`` divides between the phases, per LP fraction.

    Returns one row per f: sigma (the same in both phases), lp_steps, ft_steps, epsilon_lp and
    epsilon_ft (each phase alone), epsilon_total (both composed by the accountant: the target).
    Their sum exceeds the total: composition in RDP is tighter than adding epsilons.
    """
    plan = plan_privacy(
        sampling="poisson",
        accountant=accountant,
        n_train=n_train,
        batch_size=batch_size,
        steps=steps,
        max_grad_norm=1.0,
        epsilon=epsilon,
        delta=delta,
    )
    sigma, q = plan.noise_multiplier, plan.sample_rate
    rows = []
    for f in fractions:
        lp, ft = phase_steps(steps, f)
        alone = lambda m: compose_epsilon([(sigma, q, m)], plan.delta, accountant)  # noqa: E731
        rows.append(
            {
                "epsilon": epsilon,
                "f": f,
                "sigma": sigma,
                "sample_rate": q,
                "delta": plan.delta,
                "lp_steps": lp,
                "ft_steps": ft,
                "epsilon_lp": alone(lp),
                "epsilon_ft": alone(ft),
                "epsilon_total": compose_epsilon([(sigma, q, lp), (sigma, q, ft)], plan.delta, accountant),
            }
        )
    return pd.DataFrame(rows)


def run_phase(cfg: CollectConfig, out: Path, progress: bool) -> Path:
    """One collect run: reuse a finished store with these settings, resume an interrupted one."""
    if RunDir(out).has_store():
        manifest = read_manifest(out)
        if settings_that_differ(manifest, {**cfg.to_dict(), "init_from": manifest["config"].get("init_from")}):
            raise SpectralError(f"{out} holds a run with other settings; remove it or choose another directory")
        if manifest["status"] == "complete":
            return out
        return collect(cfg, out, resume=True, progress=progress)
    return collect(cfg, out, progress=progress)


def run_point(
    base: CollectConfig,
    epsilon: float,
    f: float,
    steps: int,
    sigma: float,
    lp: dict,
    ft: dict,
    out: Path,
    progress: bool = True,
) -> dict:
    """Train one (ε, f) point: LP then FT, each a stored collect run; returns its final evaluation.

    lp, ft : the phases' own settings (``params``, ``optimizer``, ``lr``)
    """
    lp_steps, ft_steps = phase_steps(steps, f)
    # one sigma for both phases; only the last phase is evaluated (on the dev split, the paper's test set)
    common = dict(noise_multiplier=sigma, epsilon=epsilon, checkpoint_every=steps)
    last = None
    if lp_steps:
        cfg = replace(base, **lp, steps=lp_steps, eval_every=0 if ft_steps else lp_steps, **common)
        last = run_phase(cfg.validate(), out / "lp", progress)
    if ft_steps:
        cfg = replace(base, **ft, steps=ft_steps, eval_every=ft_steps, init_from=str(last) if last else None, **common)
        last = run_phase(cfg.validate(), out / "ft", progress)
    stores = {ph: open_store(out / ph) for ph, n in (("lp", lp_steps), ("ft", ft_steps)) if n}
    store = stores["ft" if ft_steps else "lp"]
    final = store.table("eval").iloc[-1]
    return {
        "test_loss": float(final["loss"]),
        "test_accuracy": float(final["accuracy"]),
        "epsilon_spent": float(store.steps.epsilon.iloc[-1]),
        "epsilon_after_lp": float(stores["lp"].steps.epsilon.iloc[-1]) if lp_steps else 0.0,
        "seconds": float(sum(s.steps.seconds.sum() for s in stores.values())),
    }


def phase_spectrum(store, label: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Spectrum and held-out G_k of one phase's stored clipped gradients (analyse stage),
    fitted by the report stage: (summary row, singular values, G_k curve)."""
    k = min(store.n_steps, store.d) - 1
    spec = principal_components(store, k)
    s = spec.singular_values
    fit = fits.spectrum_fit(s, (1, k))
    G, _ = rlc.held_out(store, min(store.n_steps // 2, store.d) - 1)
    curve = rlc.summarize(G)
    g = fits.rlc_fit(curve)
    energy = spec.eigenvalues / spec.total_energy
    row = {
        "phase": label,
        "n_steps": store.n_steps,
        "d": store.d,
        "slope": fit["slope"],
        "slope_low": fit["ci_low"],
        "slope_high": fit["ci_high"],
        "r2": fit["r2"],
        "top1_energy": float(energy[0]),
        "top5_energy": float(energy[:5].sum()),
        "c": g["c"],
        "c_low": g["c_low"],
        "c_high": g["c_high"],
        "G_0": g["g0"],
    }
    frame = pd.DataFrame(
        {"phase": label, "rank": np.arange(1, k + 1), "singular_value": s, "relative": s / s[0], "energy": energy}
    )
    return row, frame, curve.assign(phase=label, relative=curve.rms / curve.rms.iloc[0])


def plot(utility: pd.DataFrame, spectra: pd.DataFrame, curves: pd.DataFrame, table: pd.DataFrame, out: Path):
    with style(**{"figure.figsize": (10, 7.5)}):
        fig, axes = new_figure(2, 2)
        for i, (eps, g) in enumerate(utility.groupby("epsilon")):
            g = g.groupby("f", as_index=False)[["test_accuracy", "test_loss"]].agg(["mean", "std"])
            for ax, col in zip(axes[0], ("test_accuracy", "test_loss")):
                ax.errorbar(
                    g["f"],
                    g[(col, "mean")],
                    yerr=g[(col, "std")].fillna(0),
                    marker=MARKERS[i % len(MARKERS)],
                    color=COLORS[i],
                    capsize=3,
                    label=f"ε = {eps:g}",
                )
        # SST-2's test split has no labels: the "test_*" columns are measured on the dev split
        for ax, name in zip(axes[0], ("dev accuracy", "dev loss")):
            ax.set_xlabel("share of the budget spent on linear probing, f")
            ax.set_ylabel(name)
            ax.set_xticks(sorted(utility.f.unique()))
        axes[0, 0].legend(loc="lower right")
        axes[0, 1].legend(loc="upper right")
        seeds = utility.seed.nunique()
        axes[0, 0].set_title(f"Utility of the budget split (0 = FT, 1 = LP; {seeds} seed{'s' * (seeds > 1)})")
        for i, (label, g) in enumerate(spectra.groupby("phase", sort=False)):
            r = table.set_index("phase").loc[label]
            axes[1, 0].loglog(
                g["rank"],
                g.relative,
                marker=MARKERS[i % len(MARKERS)],
                ms=3,
                color=COLORS[i],
                label=f"{label} (d = {int(r.d):,}; slope {r.slope:.2f})",
            )
        axes[1, 0].set_xlabel("rank k")
        axes[1, 0].set_ylabel("σ_k / σ_1 of the stored gradients")
        axes[1, 0].set_title("Gradient spectra of the phases")
        axes[1, 0].set_ylim(top=4)  # room for the legend above the curves
        axes[1, 0].legend(fontsize=8, loc="upper right")
        for i, (label, g) in enumerate(curves.groupby("phase", sort=False)):
            r = table.set_index("phase").loc[label]
            g = g[g.k >= 1]
            axes[1, 1].loglog(
                g.k,
                g.relative,
                marker=MARKERS[i % len(MARKERS)],
                ms=3,
                color=COLORS[i],
                label=f"{label} (c = {r.c:.2f})",
            )
        axes[1, 1].set_xlabel("subspace dimension k")
        axes[1, 1].set_ylabel("held-out G_k / G_0")
        axes[1, 1].set_title("Gradient norm outside the top-k subspace")
        axes[1, 1].legend(fontsize=8)
    return save(fig, out / "lp_ft", {"_utility": utility, "_spectra": spectra, "_curves": curves, "_phases": table})


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="study directory (one collect run per phase and point)")
    p.add_argument("--config", type=Path, default=Path("cpu"), help="the collect settings both phases start from")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0], help="total budgets")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="shares of the budget for LP")
    p.add_argument("--steps", type=int, default=100, help="total steps T of both phases")
    p.add_argument("--lp-optimizer", default="sgd", help="optimizer of the LP phase (sgd or adam)")
    p.add_argument("--lp-lr", type=float, default=0.05, help="learning rate of the LP phase")
    p.add_argument("--ft-optimizer", help="optimizer of the FT phase [the config's]")
    p.add_argument("--ft-lr", type=float, help="learning rate of the FT phase [the config's]")
    p.add_argument("--ft-params", help="parameters of the FT phase, e.g. all [the config's]")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--spectra-epsilon", type=float, help="ε whose phases' spectra are compared [the largest]")
    for name in ("model", "data", "objective"):
        p.add_argument(f"--{name}", help=f"[the config's {name}]")
    for name in ("train-size", "eval-size", "max-length", "batch-size", "physical-batch-size"):
        p.add_argument(f"--{name}", type=int, help="[the config's]")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cli.quiet_library_warnings()
    if args.steps < 1 or args.seeds < 1:
        raise SpectralError("--steps and --seeds must be at least 1")
    names = ("model", "data", "objective", "train_size", "eval_size", "max_length", "batch_size", "physical_batch_size")
    given = {k: v for k in names if (v := getattr(args, k)) is not None}
    base = CollectConfig.from_dict({**configs.read(args.config), **given, "streams": ["clipped"]}).validate()
    train, _, _ = load_data(base.data, base.text_column, base.label_column, base.seed)
    n_train = len(train.head(base.train_size))
    split = pd.concat(
        [
            budget_split(e, args.steps, args.fractions, n_train=n_train, batch_size=base.batch_size)
            for e in args.epsilons
        ],
        ignore_index=True,
    )
    print(split.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    lp = dict(params="classifier", optimizer=args.lp_optimizer, lr=args.lp_lr)
    ft = dict(
        params=args.ft_params or base.params,
        optimizer=args.ft_optimizer or base.optimizer,
        lr=base.lr if args.ft_lr is None else args.ft_lr,
    )
    for phase in (lp, ft):
        replace(base, **phase).validate()  # a bad optimizer or parameter set fails before any training
    rows = []
    for seed in range(args.seeds):
        for b in split.itertuples():
            point = args.out / f"eps{b.epsilon:g}" / f"f{b.f:g}" / f"seed{seed}"
            print(
                f"ε = {b.epsilon:g}, f = {b.f:g}, seed {seed}: {b.lp_steps} LP + {b.ft_steps} FT steps, σ = {b.sigma:.4f}"
            )
            res = run_point(
                replace(base, seed=seed),
                b.epsilon,
                b.f,
                args.steps,
                b.sigma,
                lp,
                ft,
                point,
                progress=not args.no_progress,
            )
            rows.append({**b._asdict(), "seed": seed, **res})
    utility = pd.DataFrame(rows).drop(columns="Index")
    print(utility[["epsilon", "f", "seed", "epsilon_spent", "test_accuracy", "test_loss"]].to_string(index=False))

    eps = args.spectra_epsilon or max(args.epsilons)
    phases = {
        "LP alone (f = 1)": (1.0, "lp"),
        "FT alone (f = 0)": (0.0, "ft"),
        "LP-FT (f = 0.5): LP phase": (0.5, "lp"),
        "LP-FT (f = 0.5): FT phase": (0.5, "ft"),
    }
    paths = {label: args.out / f"eps{eps:g}" / f"f{f:g}" / "seed0" / ph for label, (f, ph) in phases.items()}
    # a held-out G_k fit needs a few components fitted on half of the steps
    stores = {label: open_store(path) for label, path in paths.items() if RunDir(path).has_store()}
    results = [phase_spectrum(s, label) for label, s in stores.items() if s.n_steps >= 8]
    if not results:
        raise SpectralError(f"no phase at ε = {eps:g} has the 8 stored steps a spectrum fit needs; use more --steps")
    table = pd.DataFrame([r[0] for r in results])
    spectra = pd.concat([r[1] for r in results], ignore_index=True)
    curves = pd.concat([r[2] for r in results], ignore_index=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    (args.out / "lp_ft.json").write_text(
        json.dumps(
            {
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "utility": utility.to_dict(orient="records"),
                "phase_spectra": table.to_dict(orient="records"),
            },
            indent=1,
        )
    )
    paths = plot(utility, spectra, curves, table, args.out)
    print("figure:", paths[0])


if __name__ == "__main__":
    sys.exit(main())
