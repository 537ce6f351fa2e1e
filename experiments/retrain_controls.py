"""The retraining table with its controls: dev accuracy after the last step per variant and mode, mean with a
95% t-interval over the retrain seeds, the paired difference to unrestricted training (same seeds: same
batches, noise and dropout), and the share of the run's gradient energy each subspace captures.

    python experiments/retrain_controls.py --runs runs/ladder-s1/retrain --out figures/retrain

--runs copies each setting's retrain_history.csv / retrain_summary.json found there into --out (as
<setting>_history.csv / <setting>_summary.json, replacing older copies of the same setting); the table is then
built from every <setting>_history.csv in --out, so the committed files alone redraw it. Energies come from
--out/subspace_energy.csv (experiments/subspace_energy.py). Writes controls_table.csv/.md/.json and
fig5_retrain (one panel per mode; the public-data subspace in its own panel).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import spectral as sp

FULL = "full"  # unrestricted: the same run in both modes (nothing is projected)
SKIP = ("check-",)  # reproductions of a committed run, not settings of the table
ORDER = ["full", "rank 10", "rank 100", "components 101-200", "span-random 100", "random 100", "random 10",
         "complement of top 100", "rank 0 (noise only)"]  # fmt: skip


def copy_settings(runs: Path, out: Path) -> list[str]:
    copied = []
    for history in sorted(runs.glob("*/retrain_history.csv")):
        setting = history.parent.name
        if setting.startswith(SKIP):
            continue
        shutil.copyfile(history, out / f"{setting}_history.csv")
        summary = history.parent / "retrain_summary.json"
        if summary.is_file():
            shutil.copyfile(summary, out / f"{setting}_summary.json")
        copied.append(setting)
    return copied


def load(out: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(out.glob("*_history.csv")):
        setting = path.name[: -len("_history.csv")]
        if setting.startswith(SKIP):
            continue
        h = pd.read_csv(path)
        mode = setting.split("-")[0]
        public = setting.split("-")[1] == "public"
        h = h.assign(
            setting=f"{mode}-public" if public else f"{mode}-trajectory",  # one panel per mode (+ public)
            mode=mode,
            label=np.where(public, "public top 100", h.variant),
        )
        frames.append(h)
    return pd.concat(frames, ignore_index=True)


def load_energy(out: Path) -> dict:
    """Each subspace's share of the run's gradient energy (all steps), from out/subspace_energy.csv if present."""
    path = out / "subspace_energy.csv"
    return pd.read_csv(path).set_index("subspace").all_steps.to_dict() if path.is_file() else {}


def interval(x: np.ndarray) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval; None below two values)."""
    if len(x) < 2:
        return float(x.mean()), None
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def table(history: pd.DataFrame, energy: dict) -> pd.DataFrame:
    last = history[history.step == history.step.max()]
    full = last[(last.label == FULL) & (last["mode"] == "signal")].set_index("seed").accuracy
    rows = []
    for (mode, label), g in last.groupby(["mode", "label"], sort=False):
        if label == FULL and mode != "signal":
            continue
        acc = g.set_index("seed").accuracy
        mean, half = interval(acc.to_numpy())
        paired = acc.index.intersection(full.index)
        diff, diff_half = interval((acc[paired] - full[paired]).to_numpy()) if len(paired) else (None, None)
        rows.append({
            "mode": "both" if label == FULL else mode, "variant": label, "seeds": len(acc),
            "seed_list": " ".join(str(s) for s in sorted(acc.index)), "accuracy": mean, "ci95": half,
            "diff_to_full": None if label == FULL else diff, "diff_ci95": None if label == FULL else diff_half,
            "paired_seeds": len(paired), "energy_captured": energy.get(label),
        })  # fmt: skip
    t = pd.DataFrame(rows)
    rank = {v: i for i, v in enumerate(ORDER)}
    t["_order"] = [
        ("both", "signal", "signal+noise").index(m) * 100 + rank.get(v, 50) for m, v in zip(t["mode"], t.variant)
    ]
    return t.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def markdown(t: pd.DataFrame) -> str:
    def pm(m, h):
        return "–" if m is None or pd.isna(m) else f"{m:.3f}" + ("" if h is None or pd.isna(h) else f" ± {h:.3f}")

    lines = ["| mode | variant | seeds | energy captured | dev accuracy (mean ± 95% t) | minus full (paired) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in t.itertuples():
        energy = "–" if r.energy_captured is None or pd.isna(r.energy_captured) else f"{r.energy_captured:.3f}"
        lines.append(f"| {r.mode} | {r.variant} | {r.seeds} | {energy} | {pm(r.accuracy, r.ci95)} | "
                     f"{pm(r.diff_to_full, r.diff_ci95)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="a run's retrain directory whose settings are copied into --out")
    parser.add_argument("--out", type=Path, default=Path("figures/retrain"))
    args = parser.parse_args()
    if args.runs:
        print("copied:", ", ".join(copy_settings(args.runs, args.out)) or "nothing")
    history = load(args.out)
    t = table(history, load_energy(args.out))
    t.to_csv(args.out / "controls_table.csv", index=False)
    (args.out / "controls_table.md").write_text(markdown(t) + "\n")
    records = t.astype(object).where(t.notna(), None).to_dict(orient="records")
    (args.out / "controls_table.json").write_text(json.dumps(records, indent=1, allow_nan=False))
    print(markdown(t))
    majority = json.loads((args.out / "signal-trajectory_summary.json").read_text()).get("majority_accuracy")
    drawn = history.assign(variant=history.label)
    full = drawn[(drawn.label == FULL) & (drawn["mode"] == "signal")]
    drawn = pd.concat([drawn, full.assign(setting="signal+noise-trajectory")], ignore_index=True)  # in both panels
    panels = ["signal-trajectory", "signal+noise-trajectory", "signal-public"]
    rank = {v: i for i, v in enumerate(ORDER)}
    drawn = drawn.assign(_p=drawn.setting.map(panels.index), _v=drawn.variant.map(lambda v: rank.get(v, 50)))
    drawn = drawn.sort_values(["_p", "_v", "seed", "step"], kind="stable").drop(columns=["_p", "_v"])
    fig = sp.plot.retrain(drawn, majority=majority,
                          title="Retraining in restricted subspaces, with controls (300 DP steps, run seed 1)")  # fmt: skip
    sp.plotting.save(fig, args.out / "fig5_retrain", {"": sp.plot.retrain_panels(drawn)[1]},
                     {"majority_accuracy": majority})  # fmt: skip


if __name__ == "__main__":
    main()
