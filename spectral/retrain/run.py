"""Retraining from the pretrained model with every update restricted to a top-r subspace.

For each variant (rank r, or "full" = unrestricted) and seed, a fresh DP fine-tuning run with the
collect run's settings (model, data, trainable set, DP-Adam, C, ε, δ) for ``steps`` steps; dev
accuracy every ``eval_every`` steps. Results: retrain_history.csv (one row per evaluation),
retrain_summary.json (final accuracy per variant, per-step time) and retrain_config.json, saved after
every finished (variant, seed) run; a rerun with the same settings skips finished runs.

Where the subspace comes from matters for privacy:
  trajectory  the top-r components of the run's own (private) gradient trajectory. That trajectory
              was computed from the private data without noise, so this subspace — and hence the
              retrained model — is NOT differentially private. It shows where the gradients live.
  public      the top-r components of non-private gradients on a disjoint public part of the
              training set (the first ``public_size`` examples, which private training then leaves
              out). Honest: the subspace costs no privacy, and the retraining is (ε, δ)-DP.
and the controls that say whether the top directions are what matters:
  random      a uniformly random r-dimensional subspace (seeded by the run's seed)
  RUN_DIR     the top-r components of another collect run's trajectory (another seed: does the
              subspace transfer?); it must train the same parameters
  rank 0      (signal mode) the clipped gradient projected to nothing, the same noise added: what
              noise alone does to the model, on the same batches and noise draws
  components  (``components="101-200"``) the run's own components 101…200: as many directions as the
              top 100, less energy
  span-random a random r-dimensional subspace of the span of the stored gradients (random combinations of
              the stored rows, orthonormalised): inside the gradients' span, not their top
  complement  updates projected onto the orthogonal complement of the top r (the bulk; Song, Ahn & Yun,
              arXiv 2405.16002); the noise as the mode says
Each variant records in retrain_summary.json the share of the run's stored gradient energy its subspace
holds (``energy_captured``: all steps, and the second half), so accuracy can be read beside energy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import jsonio, layout, resume
from ..device import resolve_device
from ..dp.config import CollectConfig
from ..dp.data import load_split
from ..dp.privacy import PrivacyLedger
from ..dp.training import prepare
from ..errors import SpectralError
from ..layout import RunDir
from ..store import atomic_write
from ..store import open as open_store
from .coordinates import CoordinateEngine
from .subspace import Subspace

MODES = ("signal", "signal+noise", "coordinates")
SOURCES = ("trajectory", "public", "random", "span-random", "complement")  # or another run's directory


@dataclass
class RetrainConfig:
    """What to retrain. ``settings`` overrides collect settings of the run (e.g. {"lr": 1e-3}).

    analysis : the analysis whose components span the subspace (default RUN/analysis/clipped); it
        must describe this run's store (its summary.json records which store it came from)
    """

    ranks: tuple = (10, 20, 100)
    seeds: int = 3
    mode: str = "signal"
    subspace_from: str = "trajectory"
    steps: int = 200
    eval_every: int = 25
    full: bool = True
    public_size: int = 2000
    public_steps: int = 100
    analysis: str | None = None
    components: str | None = None  # "A-B": the run's own components A…B instead of the top ranks
    settings: dict = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return self.settings.get("noise_multiplier", None) != 0

    @property
    def tag(self) -> str:
        """A name for this setting, e.g. ``signal-trajectory``, ``signal-trajectory-c101-200`` or
        ``signal-trajectory-nonprivate``."""
        band = f"-c{self.components}" if self.components else ""
        return f"{self.mode}-{self.source}{band}" + ("" if self.private else "-nonprivate")

    @property
    def band(self) -> tuple[int, int] | None:
        """(A, B) of ``components="A-B"``, or None."""
        if not self.components:
            return None
        first, _, last = str(self.components).partition("-")
        try:
            return int(first), int(last)
        except ValueError:
            raise SpectralError(f"components must look like 101-200, got {self.components!r}") from None

    def validate(self) -> RetrainConfig:
        if self.mode not in MODES:
            raise SpectralError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.subspace_from not in SOURCES and not RunDir(self.subspace_from).has_store():
            raise SpectralError(
                f"subspace source {self.subspace_from!r} is neither one of {', '.join(SOURCES)} nor a collect run directory"
            )
        if min(self.ranks, default=1) < 0 or self.seeds < 1 or self.steps < 1 or self.eval_every < 1:
            raise SpectralError("ranks must be >= 0; seeds, steps and eval_every >= 1")
        if 0 in self.ranks and self.mode != "signal":
            raise SpectralError(f"rank 0 (noise only) is a control of the signal mode; {self.mode} would not update")
        if self.band is not None and not (1 <= self.band[0] <= self.band[1]):
            raise SpectralError(f"components {self.components}: need 1 <= A <= B")
        if self.band is not None and self.subspace_from != "trajectory":
            raise SpectralError("components A-B are the run's own: use them with --subspace-from trajectory")
        if self.subspace_from == "complement" and self.mode == "coordinates":
            raise SpectralError("the complement has d - r dimensions: use it in signal or signal+noise mode")
        return self

    @property
    def source(self) -> str:
        """``trajectory``, ``public``, ``random`` or ``run_<name>`` for another run's trajectory."""
        return (
            self.subspace_from
            if self.subspace_from in SOURCES
            else f"run_{Path(self.subspace_from).name.replace('-', '_')}"
        )

    def variant(self, rank: int | None) -> str:
        """The name of a variant in tables and legends: ``rank 10``, ``random 10``, ``rank 10 of run_s2``,
        ``rank 0 (noise only)`` or ``full``."""
        if rank is None:
            return "full"
        if rank == 0:
            return "rank 0 (noise only)"
        if self.band is not None:
            return f"components {self.band[0]}-{self.band[1]}"
        named = {"trajectory": "rank", "public": "rank", "random": "random", "span-random": "span-random",
                 "complement": "complement of top"}  # fmt: skip
        return f"{named[self.source]} {rank}" if self.source in named else f"rank {rank} of {self.source}"


def check_analysis(run: RunDir, analysis: Path) -> None:
    """Refuse components computed from another store (the analysis records its store)."""
    summary = analysis / layout.SUMMARY
    if not summary.is_file():
        raise SpectralError(f"{analysis} holds no analysis; run python -m spectral.analyse {run.root} first")
    source = json.loads(summary.read_text()).get("store")
    if source is not None and Path(source).resolve() != run.store.resolve():
        raise SpectralError(f"{analysis} analyses {source}, not the run {run.root}")


def public_subspace(
    cfg: CollectConfig, public, dev, rank: int, steps: int, progress: bool, head: dict | None = None, device="cpu"
) -> Subspace:
    """Top-``rank`` components of non-private clipped gradients along ``steps`` steps on public data."""
    from ..analyse import principal_components

    pub = replace(cfg, noise_multiplier=0.0, epsilon=None, steps=steps, eval_every=0)
    torch.manual_seed(cfg.seed)
    t = prepare(pub, split=(public, dev), head=head, device=device)
    rows = [out.clipped.cpu().numpy() for _, _, out, _ in t.steps(t.engine, progress=progress, desc="public gradients")]
    spec = principal_components(np.stack(rows), min(rank, steps))
    return Subspace(spec.components)


def subspace_basis(config: RetrainConfig, run: RunDir, analysis: Path, base, public, dev, progress, head, device):
    """The ``max(config.ranks)`` directions the variants restrict to, from ``config.subspace_from``."""
    if config.band is not None:
        first, last = config.band
        return Subspace.from_analysis(analysis, last - first + 1, first=first)
    rank = max(config.ranks)
    if config.subspace_from in ("trajectory", "complement"):
        return Subspace.from_analysis(analysis, rank)
    if config.subspace_from == "span-random":
        from ..analyse.matrix import TrajectoryMatrix

        return Subspace.span_random(TrajectoryMatrix(open_store(run.store), "clipped"), rank, base.seed)
    if config.subspace_from == "public":
        return public_subspace(base, public, dev, rank, config.public_steps, progress, head, device)
    if config.subspace_from == "random":
        return Subspace.random(int(open_store(run.store).manifest["d"]), rank, base.seed)
    other = RunDir(config.subspace_from)
    mine, theirs = ([(p["name"], p["shape"]) for p in open_store(r.store).manifest["layout"]] for r in (run, other))
    if mine != theirs:
        raise SpectralError(f"{other.root} trains other parameters than {run.root}: its subspace does not apply")
    check_analysis(other, other.analysis("clipped"))
    return Subspace.from_analysis(other.analysis("clipped"), rank)


def restricted_engine(t, subspace: Subspace | None, mode: str):
    """The DP engine of training setup ``t`` with updates restricted to ``subspace`` by ``mode``
    (None: unrestricted)."""
    if subspace is None:
        return t.build_engine()
    if mode == "coordinates":
        c = t.cfg
        return CoordinateEngine(
            t.model,
            subspace,
            optimizer=c.optimizer,
            lr=c.lr,
            noise_multiplier=t.plan.noise_multiplier,
            max_grad_norm=c.max_grad_norm,
            expected_batch_size=t.plan.batch_size,
            seed=c.seed,
        )
    return t.build_engine(subspace.project, mode)


def train_variant(
    cfg: CollectConfig,
    split,
    subspace: Subspace | None,
    mode: str,
    progress: bool,
    desc: str,
    head: dict | None = None,
    device="cpu",
):
    """One DP run from the pretrained model with the collect run's ``head``; returns (evaluations: list
    of dicts, seconds per step)."""
    torch.manual_seed(cfg.seed)  # dropout draws from torch's global generator: seeded by the loop that trains
    t = prepare(cfg, split=split, engine=False, head=head, device=device)
    if subspace is not None:
        subspace = subspace.to(t.device)
    if subspace is not None and subspace.d != t.d:
        raise SpectralError(f"the subspace has d={subspace.d:,} but this model trains d={t.d:,} parameters")
    engine = restricted_engine(t, subspace, mode)
    ledger, evals, seconds = PrivacyLedger(t.plan), [], 0.0
    evals.append({"step": 0, **engine.evaluate(t.dev_chunks), "epsilon": 0.0})
    for step, _, _, took in t.steps(engine, progress=progress, desc=desc):
        seconds += took
        ledger.record_step(step)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evals.append({"step": step + 1, **engine.evaluate(t.dev_chunks), "epsilon": ledger.epsilon()})
    return evals, seconds / cfg.steps


def retrain(
    run, config: RetrainConfig | None = None, out=None, progress: bool = True, overwrite: bool = False, device="auto"
) -> pd.DataFrame:
    """Run every (variant, seed) for the collect run at ``run``; returns the history (variant, rank, seed,
    step, accuracy, loss, epsilon).

    Every run starts from the pretrained model with the collect run's head (read from its store), so
    the seed changes batches, noise and dropout only, as in the authors' code.

    out : results directory (default RUN/retrain/<config.tag>). One directory holds one setting:
        a rerun with the same settings continues; other settings are refused unless ``overwrite``.
    """
    config, device = (config or RetrainConfig()).validate(), resolve_device(device)
    run = RunDir(run)
    store = open_store(run.store)
    d = int(store.manifest["d"])
    analysis = Path(config.analysis) if config.analysis else run.analysis("clipped")
    if config.subspace_from in ("trajectory", "complement"):
        check_analysis(run, analysis)
    head = store.attachment("head") if "head" in store.manifest.get("attachments", []) else None
    out = Path(out) if out else run.retrain(config.tag)
    out.mkdir(parents=True, exist_ok=True)
    base = training_config(store, config)
    history_path = out / layout.RETRAIN_HISTORY
    history = finished_runs(out, {**asdict(config), "run": str(run.store.resolve())}, overwrite)
    public, train, dev = split_public(config, base)
    majority = float(np.bincount(dev.labels).max() / len(dev)) if len(dev) else None  # the accuracy of no learning
    ranks = [config.band[1] - config.band[0] + 1] if config.band else config.ranks
    variants = [(config.variant(r), r) for r in ranks] + ([("full", None)] if config.full else [])
    bases: dict = {}
    summary_path = out / layout.RETRAIN_SUMMARY
    saved = json.loads(summary_path.read_text()) if len(history) and summary_path.is_file() else {}
    timing, energies = saved.get("seconds_per_step", {}), saved.get("energy_captured", {})
    for seed in range(config.seeds):
        for name, rank in variants:
            if len(history) and ((history.variant == name) & (history.seed == seed)).any():
                continue  # finished before
            subspace = Subspace(torch.zeros(d, 0)) if rank == 0 else None  # rank 0: the signal projected to nothing
            if rank:
                if "basis" not in bases:  # the max(ranks) directions, loaded or estimated once
                    bases["basis"] = subspace_basis(config, run, analysis, base, public, dev, progress, head, device)
                subspace = variant_subspace(config, bases["basis"], rank)
            if name not in energies:  # beside accuracy: how much of the run's gradient energy the variant keeps
                energies[name] = energy_captured(store, subspace)
            cfg = replace(base, seed=base.seed + seed)
            evals, per_step = train_variant(
                cfg, (train, dev), subspace, config.mode, progress, f"{name} seed {seed}", head, device
            )
            rows = pd.DataFrame(
                [{"setting": config.tag, "variant": name, "rank": rank if rank else 0,
                  "mode": config.mode if rank is not None else "full", "subspace_from": config.source,
                  "private": config.private, "seed": seed, **e} for e in evals]
            )  # fmt: skip
            history = pd.concat([history, rows], ignore_index=True) if len(history) else rows
            timing.setdefault(name, []).append(per_step)
            atomic_write(history_path, lambda f: f.write(history.to_csv(index=False).encode()))
            summary = {**summarize(history, timing, majority), "energy_captured": energies}
            summary_path.write_text(jsonio.dumps(summary, indent=1))
    return history


def training_config(store, config: RetrainConfig) -> CollectConfig:
    """The collect run's settings with the retraining's steps, evaluation and overrides."""
    return replace(
        CollectConfig.from_dict(store.manifest["config"]),
        steps=config.steps,
        eval_every=config.eval_every,
        streams=["clipped"],  # retraining stores nothing: whole batches, never split in halves
        probe_batches=None,  # nor measures probe batches (a collect run's measurement, not its training)
        **config.settings,
    ).validate()


def split_public(config: RetrainConfig, base: CollectConfig):
    """``(public, train, dev)``: with ``--subspace-from public`` the first ``public_size`` training examples
    are set aside (never trained on privately), else public is None."""
    train, dev, _ = load_split(base)
    if config.subspace_from != "public":
        return None, train, dev
    if config.public_size >= len(train):
        raise SpectralError(f"public_size={config.public_size} leaves no private training data ({len(train)})")
    return train.rows(0, config.public_size), train.rows(config.public_size), dev


def finished_runs(out: Path, record: dict, overwrite: bool) -> pd.DataFrame:
    """The history already in ``out`` when it holds this setting (more seeds continue it), else empty; a
    directory of other settings is refused unless ``overwrite`` (:mod:`spectral.resume`). Records the
    setting in ``out``."""
    history_path, now = out / layout.RETRAIN_HISTORY, json.loads(jsonio.dumps(record))
    history = resume.previous(
        out, "retrain_config.json",
        read=lambda: pd.read_csv(history_path) if history_path.is_file() else pd.DataFrame(),
        same=lambda saved: {**saved, "seeds": None} == {**now, "seeds": None},  # more seeds: the same setting
        what="retraining results", overwrite=overwrite,
    )  # fmt: skip
    (out / "retrain_config.json").write_text(jsonio.dumps(record, indent=1))
    return pd.DataFrame() if history is None else history


def variant_subspace(config: RetrainConfig, basis: Subspace, rank: int) -> Subspace:
    """The first ``rank`` directions of ``basis``, or their orthogonal complement (``complement``)."""
    subspace = Subspace(basis.V[:, :rank])
    return subspace.orthogonal_complement() if config.subspace_from == "complement" else subspace


def energy_captured(store, subspace: Subspace | None) -> dict:
    """The share of the run's stored ``clipped`` energy a variant's subspace holds (None: full, 1)."""
    if subspace is None:
        return {"all_steps": 1.0, "second_half": 1.0}
    from ..analyse.matrix import TrajectoryMatrix

    return subspace.captured_energy(TrajectoryMatrix(store, "clipped"))


def summarize(history: pd.DataFrame, timing: dict, majority: float | None = None) -> dict:
    """Final dev accuracy per variant (mean ± std over seeds), seconds per step, and the dev accuracy of
    always predicting the majority class."""
    from scipy import stats

    last = history[history.step == history.step.max()]
    final = last.groupby("variant").accuracy.agg(["mean", "std", "count"]).fillna(0.0)

    def interval(r) -> list | None:  # 95% t interval of the mean over seeds (seeds differ in batches and noise)
        if r["count"] < 2:
            return None
        half = stats.t.ppf(0.975, r["count"] - 1) * r["std"] / np.sqrt(r["count"])
        return [r["mean"] - half, r["mean"] + half]

    return {
        "final_accuracy": {
            v: {"mean": r["mean"], "std": r["std"], "ci95": interval(r), "seeds": int(r["count"])}
            for v, r in final.iterrows()
        },
        "final_epsilon": float(last.epsilon.max()),
        "majority_accuracy": majority,
        "seconds_per_step": timing,
    }
