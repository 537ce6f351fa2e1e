"""spectral: spectra of differentially private gradients (Li et al. 2022).

Stages, data flowing one way: ``spectral.collect`` (DP fine-tuning that logs every
step's gradient) -> ``spectral.store`` (the on-disk trajectory) -> analyse -> report.

From Python (nothing heavy is imported until it is used; ``import spectral`` does not import torch)::

    import spectral as sp
    sp.collect("runs/demo", steps=50)
    sp.analyse("runs/demo", k=100)
    run = sp.open("runs/demo"); run.spectrum(); run.fits()
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself), imported on first use (PEP 562)
_LAZY = {
    "collect": ("spectral.collect", None),  # callable: spectral.api.collect
    "analyse": ("spectral.analyse", None),  # callable: spectral.api.analyse
    "retrain": ("spectral.retrain", None),  # callable: spectral.api.retrain
    "report": ("spectral.report", None),  # callable: spectral.api.report
    "toy": ("spectral.toy", None),  # callable: spectral.api.toy
    "open": ("spectral.api", "open"),
    "Run": ("spectral.api", "Run"),
    "CollectConfig": ("spectral.dp.config", "CollectConfig"),
    "AnalyseConfig": ("spectral.analyse.run", "AnalyseConfig"),
    "RetrainConfig": ("spectral.retrain.run", "RetrainConfig"),
    "ReportConfig": ("spectral.report.run", "ReportConfig"),
    "ToyConfig": ("spectral.toy.grid", "ToyConfig"),
    "compare": ("spectral.compare", None),  # callable: spectral.compare.run.compare
    "fits": ("spectral.report.fits", None),
    "theory": ("spectral.theory", None),
    "plot": ("spectral.report.plot", None),
    "plotting": ("spectral.plotting", None),
    "SpectralError": ("spectral.errors", "SpectralError"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'spectral' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)
