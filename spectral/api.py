"""The toolkit from Python: ``import spectral as sp`` (re-exported lazily by ``spectral/__init__.py``).

>>> import spectral as sp
>>> sp.collect("runs/demo", steps=50)                   # keyword overrides of CollectConfig
>>> sp.analyse("runs/demo", k=100, holdout="alternate")  # ... of AnalyseConfig, validated as the CLI does
>>> run = sp.open("runs/demo")
>>> run.steps, run.eval, run.spectrum(), run.rlc(), run.fits()

Each stage function takes the run directory, then either a config object or keyword overrides of its
fields (not both); a field that does not exist, or a value the CLI would refuse, is one
:class:`~spectral.errors.SpectralError` with the CLI's text.
"""

from __future__ import annotations

from dataclasses import fields
from functools import cached_property

from .errors import SpectralError
from .layout import RunDir


def configured(config_cls, config, overrides: dict):
    """``config`` as given, or ``config_cls(**overrides)`` validated (unknown fields are an error)."""
    if config is not None and overrides:
        raise SpectralError("pass either a config object or keyword settings, not both")
    if config is not None:
        return config
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SpectralError(
            f"unknown setting(s) {', '.join(unknown)} for {config_cls.__name__}; known: {', '.join(sorted(known))}"
        )
    config = config_cls(**overrides)
    return config.validate() if hasattr(config, "validate") else config


def collect(
    run, config=None, *, resume=False, overwrite=False, progress=True, device="auto", stop_after=None, **settings
):
    """DP fine-tuning that stores every step's gradient in ``run`` (:func:`spectral.collect.collect`)."""
    from .collect import CollectConfig
    from .collect import collect as _collect

    cfg = None if resume else configured(CollectConfig, config, settings)
    return _collect(cfg, run, resume=resume, overwrite=overwrite, progress=progress, device=device,
                    requested=settings if resume else None, stop_after=stop_after)  # fmt: skip


def analyse(run, config=None, *, out=None, progress=True, device="auto", **settings):
    """Principal components, G_k curves and densities of a stream (:func:`spectral.analyse.analyse`)."""
    from .analyse import AnalyseConfig
    from .analyse import analyse as _analyse

    return _analyse(run, configured(AnalyseConfig, config, settings), out=out, progress=progress, device=device)


def retrain(run, config=None, *, out=None, progress=True, overwrite=False, device="auto", **settings):
    """DP retraining inside top-r subspaces and controls (:func:`spectral.retrain.retrain`)."""
    from .retrain import RetrainConfig
    from .retrain import retrain as _retrain

    config = configured(RetrainConfig, config, settings)
    return _retrain(run, config, out=out, progress=progress, overwrite=overwrite, device=device)


def report(run, config=None, *, out=None, **settings):
    """Fits and figures of everything analysed in ``run`` (:func:`spectral.report.report`)."""
    from .report import ReportConfig
    from .report import report as _report

    return _report(run, configured(ReportConfig, config, settings), out=out)


def toy(run, config=None, *, progress=True, device="auto", overwrite=False, **settings):
    """The paper's geometric-median toy (:func:`spectral.toy.toy`)."""
    from .toy import ToyConfig
    from .toy import toy as _toy

    return _toy(run, configured(ToyConfig, config, settings), progress=progress, device=device, overwrite=overwrite)


class Run:
    """One run directory read back as data: the store, its tables, and each stage's outputs as
    DataFrames (nothing is computed here; run the stages first)."""

    def __init__(self, path):
        self.dir = RunDir(path)
        if not self.dir.root.is_dir():
            raise SpectralError(f"{self.dir.root}: no such run directory")

    def __repr__(self) -> str:
        return f"spectral.open({str(self.dir.root)!r})"

    @cached_property
    def store(self):
        """The trajectory store (:class:`spectral.store.Store`): ``rows(stream)``, ``manifest``, ..."""
        from .store import open as open_store

        return open_store(self.dir.store)

    @property
    def steps(self):
        """One row per DP step: loss, lr, epsilon, norms, batch size, seconds."""
        return self.store.steps

    @property
    def eval(self):
        """Dev loss and accuracy at the evaluated steps (step -1: before any update)."""
        return self.store.table("eval")

    def _read(self, stream: str, name: str, what: str):
        import pandas as pd

        path = self.dir.analysis(stream) / name
        if not path.is_file():
            raise SpectralError(
                f"{path} does not exist: run sp.analyse({str(self.dir.root)!r}, stream={stream!r}) {what}"
            )
        return pd.read_csv(path)

    def spectrum(self, stream: str = "clipped"):
        """rank, eigenvalue, singular value, residual, captured energy of the analysed ``stream``."""
        from . import layout

        return self._read(stream, layout.SPECTRUM, "first")

    def rlc(self, stream: str = "clipped", kind: str = "held-out"):
        """The G_k summary per k (mean, rms, max, quantiles): ``held-out`` or ``in-sample``."""
        from . import layout

        names = {"held-out": layout.RLC_HELD_OUT, "in-sample": layout.RLC_IN_SAMPLE}
        if kind not in names:
            raise SpectralError(f"unknown kind {kind!r}; choose held-out or in-sample")
        return self._read(stream, names[kind], "first")

    def groups(self, stream: str = "clipped"):
        """Per-group eigenvalues (``analyse --groups``): group, rank, eigenvalue."""
        from . import layout

        return self._read(stream, layout.GROUPS, "with groups='layer' or 'param'")

    def fits(self, stream: str = "clipped", fit_range=(1, 500)) -> dict:
        """Power law of σ_k over ``fit_range`` and the G_k exponent c (held-out rms and max), as the report fits them."""
        from .report import fits

        spec = self.spectrum(stream)
        held = self.rlc(stream)
        return {
            "spectrum": fits.spectrum_fit(spec.singular_value.to_numpy(), fit_range),
            "rlc_rms": fits.rlc_fit(held, "rms"),
            "rlc_max": fits.rlc_fit(held, "max"),
        }


def open(path) -> Run:  # noqa: A001 - sp.open(run), as spectral.store.open
    """The run directory at ``path`` as a :class:`Run`."""
    return Run(path)
