"""The analyse stage as a function: principal components, G_k curves and densities of one stream,
written into the run directory's ``analysis/<stream>/`` (see :mod:`spectral.layout`)."""

from __future__ import annotations

import math
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import layout
from ..device import resolve_device
from ..errors import SpectralError
from ..layout import RunDir
from ..store import open as open_store
from . import density, rlc
from .backends import make_ops
from .groups import GROUPINGS
from .pca import METHODS, Spectrum, principal_components

HOLDOUTS = ("half", "alternate", "none")
PAPER_K = 1000  # the authors' top-k (spectral_analysis: 1000 eigenpairs)


@dataclass
class AnalyseConfig:
    """What to compute for one stream of a run.

    k : number of principal components; None takes ``min(1000, n)`` as the paper, enough for its
        fit range 1…500 (a smaller k is allowed, with a warning when it cuts that range short)
    holdout : held-out G_k: components fitted on the first half (``half``) or the even steps
        (``alternate``) and measured on the rest; ``none`` skips it
    max_memory : bytes for block buffers (None: a quarter of the available RAM)
    dask : run the passes on a dask cluster, ``local:N`` or ``tcp://HOST:PORT``
    batch_size : predict what these steps would show at this batch size (or ``inf``) from the run's
        ``sampling`` stream (:mod:`spectral.analyse.batch`); outputs in ``analysis/<stream>@B<b>``
    groups : ``layer`` or ``param``: also one spectrum per group of parameters from the same Gram pass
        (:mod:`spectral.analyse.groups`; groups.csv, groups_summary.csv); ``none`` (default) skips it
    batch_estimator : ``ladder`` (the default: per rank, linear in 1/B through the run's probe rungs,
        ``collect --probe-batches``), or, known to fail where the sampling noise is concentrated and kept
        for comparison, ``halves``, ``steps`` or ``matrix``; see :mod:`spectral.analyse.batch`
    """

    stream: str = "clipped"
    k: int | None = None
    method: str = "auto"
    centered: bool = False
    max_memory: int | None = None
    holdout: str = "half"
    slq: bool = False
    dask: str | None = None
    iterations: int = 10  # orthiter / seedcode: the authors used 10 (final code) and 50 (May 2022)
    batch_size: float | None = None
    batch_estimator: str = "ladder"
    groups: str = "none"

    def validate(self) -> AnalyseConfig:
        if self.method not in METHODS:
            raise SpectralError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.holdout not in HOLDOUTS:
            raise SpectralError(f"unknown holdout {self.holdout!r}; choose from {', '.join(HOLDOUTS)}")
        if self.k is not None and self.k < 1:
            raise SpectralError(f"k must be at least 1, got {self.k}")
        if self.batch_size is not None and not self.batch_size > 0:
            raise SpectralError(f"batch size must be positive or inf, got {self.batch_size}")
        if self.groups not in GROUPINGS:
            raise SpectralError(f"unknown groups {self.groups!r}; choose from {', '.join(GROUPINGS)}")
        if self.groups != "none" and (self.centered or self.method not in ("auto", "gram") or self.dask):
            raise SpectralError(
                "--groups splits the exact Gram pass: use it with the gram method, uncentred, in one process"
            )
        if self.batch_size is not None and (self.centered or self.method not in ("auto", "gram") or self.dask):
            raise SpectralError("--batch-size predicts with the exact Gram method, uncentred, in one process")
        return self


def plan(run, config: AnalyseConfig | None = None, cold: bool = True):
    """The predicted cost of :func:`analyse` with ``config`` (see :mod:`spectral.analyse.plan`); ``cold``
    probes the disk with the page cache dropped."""
    from .matrix import default_memory
    from .pca import choose_method
    from .plan import plan as make_plan

    config = (config or AnalyseConfig()).validate()
    store = open_store(RunDir(run).store)
    k = config.k or min(PAPER_K, store.n_steps - (1 if config.centered else 0))
    budget = config.max_memory or default_memory()
    method = config.method if config.method != "auto" else choose_method(store.n_steps, store.d, k, budget)[0]
    holdout = config.holdout != "none"
    if config.groups == "none":
        return make_plan(store, config.stream, method, k, budget, cold=cold, holdout=holdout)
    n_groups = check_groups_fit(store, config.groups, budget)
    return replace(make_plan(store, config.stream, "gram", k, budget, cold=cold, holdout=holdout), groups=n_groups)


def check_groups_fit(store, grouping: str, budget: int) -> int:
    """The number of groups of ``grouping``; refuses when their Gram matrices (8 n² bytes each) do not
    fit in ``budget``, naming the groupings that would."""
    from .groups import GROUPINGS, column_groups, memory_bytes

    counts = {g: len(column_groups(store.layout, g)) for g in GROUPINGS[1:]}
    need = memory_bytes(store.n_steps, counts[grouping])
    if need > budget:
        fitting = [g for g, c in counts.items() if memory_bytes(store.n_steps, c) <= budget]
        raise SpectralError(
            f"--groups {grouping}: {counts[grouping]} groups x 8 n^2 = {need / 2**30:.2f} GiB of Gram matrices exceed "
            f"the memory budget ({budget / 2**30:.2f} GiB); "
            + (f"--groups {' or '.join(fitting)} would fit" if fitting else "no grouping fits: raise --max-memory")
        )
    return counts[grouping]


def number_of_components(config: AnalyseConfig, n_steps: int) -> int:
    """``config.k``, or the paper's 500 where the steps allow; a warning when the report's fit range 1…500
    will be cut short."""
    k = config.k or min(PAPER_K, n_steps - (1 if config.centered else 0))
    if k < min(500, n_steps):
        warnings.warn(
            f"k = {k} covers ranks 1…{k} of the paper's fit range 1…500; the report will fit a shorter range",
            stacklevel=3,
        )
    return k


def analyse(run, config: AnalyseConfig | None = None, out=None, progress: bool = True, device="auto") -> Spectrum:
    """Analyse ``config.stream`` of the run at ``run``; writes its outputs and returns the spectrum.

    Outputs in ``out`` (default ``RUN/analysis/<stream>``): eigenvalues.npy, components.npy (d x k,
    memory-mappable), scores.npy, spectrum.csv, summary.json (with the store it came from),
    rlc_in_sample.csv, rlc_held_out.csv, rlc_steps.csv, density_kde.csv, density_slq.csv (slq).
    Per-pass checkpoints in ``out/checkpoints`` let an interrupted run continue. ``device``: where the
    passes run (``auto``: CUDA when available; see :func:`principal_components`).
    """
    config, device = (config or AnalyseConfig()).validate(), resolve_device(device)
    run = RunDir(run)
    store = open_store(run.store)
    if config.batch_size is not None:
        return _predict(run, store, config, out, progress, device)
    out = Path(out) if out else run.analysis(config.stream)
    out.mkdir(parents=True, exist_ok=True)
    if progress and config.dask is None:  # the cost, said before it is spent
        # the cache is left as it stands: dropping it would make this run read cold
        print("\n".join(plan(run, config, cold=False).lines()), file=sys.stderr)
    k = number_of_components(config, store.n_steps)
    client = None
    if config.dask:
        from .distributed import connect

        client = connect(config.dask)
        print(f"dask: {client}")
    try:
        kw = dict(
            orthiter_iters=config.iterations,
            stream=config.stream,
            method=config.method,
            centered=config.centered,
            max_memory=config.max_memory,
            progress=progress,
            client=client,
            device=None if client is not None else device,
        )
        source, groups = grouped_source(store, config, progress, device)
        if groups is not None:
            kw["method"] = "gram"  # the Gram pass keeps one block-Gram per group (no extra read)
        # per-pass checkpoints: an interrupted run continues; a finished Gram serves any later k
        spec = principal_components(
            source, k, components_out=out / layout.COMPONENTS, checkpoint_dir=out / "checkpoints", **kw
        )
        if groups is not None:
            write_groups(source.group_grams, groups, out)
        if "warning" in spec.info:
            print(f"warning: {spec.info['warning']}", file=sys.stderr)
        # which store (and which of its steps) this analysis describes: retrain and report check it
        spec.save(
            out, extra=dict(store=str(run.store.resolve()), store_n_steps=store.n_steps, config=_json_config(config))
        )
        write_curves(spec, store, config, k, out, kw)
        write_densities(spec, store, config, out)
    finally:
        if client is not None:
            client.close()
    return spec


def grouped_source(store, config: AnalyseConfig, progress: bool, device):
    """``(what the components are computed from, the column groups)``: the store itself, or with
    ``--groups`` a trajectory matrix that keeps one block-Gram per group (refused when they do not fit)."""
    if config.groups == "none":
        return store, None
    from .groups import column_groups
    from .matrix import TrajectoryMatrix, default_memory

    check_groups_fit(store, config.groups, config.max_memory or default_memory())
    groups = column_groups(store.layout, config.groups)
    source = TrajectoryMatrix(store, config.stream, max_memory=config.max_memory, progress=progress,
                              ops=make_ops(device), groups=groups)  # fmt: skip
    return source, groups


def write_curves(spec: Spectrum, store, config: AnalyseConfig, k: int, out: Path, kw: dict) -> None:
    """The in-sample G_k of every step and its summary; the held-out curve unless ``holdout`` is none."""
    G = rlc.in_sample(spec)
    G.to_csv(out / layout.RLC_STEPS)
    rlc.summarize(G).to_csv(out / layout.RLC_IN_SAMPLE, index=False)
    if config.holdout == "none":
        return
    k_fit = min(k, store.n_steps // 2 - (1 if config.centered else 0))
    if k_fit < 1:
        raise SpectralError(f"too few steps ({store.n_steps}) for a held-out curve; use holdout none")
    if spec.gram is not None:  # the exact methods formed H Hᵀ: no second solve, no more reads
        G_out, _ = rlc.held_out_from_gram(
            spec.gram, k_fit, split=config.holdout, centered=config.centered, ks=rlc.k_grid(k_fit)
        )
    else:
        G_out, _ = rlc.held_out(store, k_fit, split=config.holdout, ks=rlc.k_grid(k_fit), **kw)
    rlc.summarize(G_out).to_csv(out / layout.RLC_HELD_OUT, index=False)


def write_densities(spec: Spectrum, store, config: AnalyseConfig, out: Path) -> None:
    """Both kernel densities of the spectrum (k ≥ 2) and, with ``slq``, the full-spectrum SLQ density."""
    if spec.k >= 2:
        density.eigenvalue_kde(spec.eigenvalues).to_csv(out / layout.DENSITY_KDE, index=False)
        density.authors_density(spec.singular_values).to_csv(out / layout.DENSITY_PAPER, index=False)
    if config.slq:
        slq, info = density.slq_density(store, config.stream, max_memory=config.max_memory)
        slq.to_csv(out / layout.DENSITY_SLQ, index=False)
        print(f"SLQ: {info['passes']} passes; zero eigenvalues of H^T H/n: {info['zero_mass']:.4%} of d")


def write_groups(grams: dict, groups: dict, out: Path) -> None:
    """groups.csv, groups_summary.csv and the groups' in-sample G_k (:mod:`spectral.analyse.groups`)."""
    from .groups import group_spectra

    eigenvalues, summary, curves = group_spectra(grams, groups)
    eigenvalues.to_csv(out / layout.GROUPS, index=False)
    summary.to_csv(out / layout.GROUPS_SUMMARY, index=False)
    curves.to_csv(out / layout.GROUPS_RLC, index=False)


def analysis_dir(run, config: AnalyseConfig) -> Path:
    """Where :func:`analyse` writes by default: ``analysis/<stream>`` or ``analysis/<stream>@B<b>``."""
    from .batch import label

    return RunDir(run).analysis(config.stream, label(config.batch_size) if config.batch_size is not None else None)


def _json_config(config: AnalyseConfig) -> dict:
    """The config as strict JSON (an infinite batch size is written "inf": JSON has no Infinity)."""
    values = asdict(config)
    if values["batch_size"] is not None and math.isinf(values["batch_size"]):
        values["batch_size"] = "inf"
    return values


def _predict(run, store, config: AnalyseConfig, out, progress: bool, device) -> Spectrum:
    """``analyse --batch-size B``: the spectrum and G_k curves predicted at batch B (same outputs)."""
    from . import batch

    out = Path(out) if out else analysis_dir(run, config)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    k = config.k or min(PAPER_K, store.n_steps)
    try:
        spec, G_in, G_out, info = batch.predict(
            store,
            k,
            config.batch_size,
            stream=config.stream,
            split=config.holdout,
            estimator=config.batch_estimator,
            max_memory=config.max_memory,
            progress=progress,
            components_out=out / layout.COMPONENTS,
            checkpoint=out / "checkpoints" / "gram",
            ops=make_ops(device),
        )
    except SpectralError:
        if created:  # no prediction: leave no directory the report would take for one
            shutil.rmtree(out, ignore_errors=True)
        raise
    if info["negative_eigenvalues"]:
        print(
            f"note: the estimate at batch {config.batch_size:g} has {info['negative_eigenvalues']} negative eigenvalues "
            f"(smallest {info['min_eigenvalue']:.3g}); kept in spectrum.csv, their singular values NaN",
            file=sys.stderr,
        )
    spec.save(out, extra=dict(store=str(run.store.resolve()), store_n_steps=store.n_steps, config=_json_config(config)))
    G_in.to_csv(out / layout.RLC_STEPS)
    rlc.summarize(G_in).to_csv(out / layout.RLC_IN_SAMPLE, index=False)
    if G_out is not None:
        rlc.summarize(G_out).to_csv(out / layout.RLC_HELD_OUT, index=False)
    positive = spec.eigenvalues[spec.eigenvalues > 0]
    if len(positive) >= 2:
        density.eigenvalue_kde(positive).to_csv(out / layout.DENSITY_KDE, index=False)
        density.authors_density(np.sqrt(positive)).to_csv(out / layout.DENSITY_PAPER, index=False)
    return spec
