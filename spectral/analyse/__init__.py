"""Analyse stage: principal components of a gradient trajectory and restricted-Lipschitz curves.

>>> import spectral.store, spectral.analyse as A
>>> A.analyse("runs/demo", A.AnalyseConfig(k=100))     # the CLI's work: writes runs/demo/analysis/clipped
>>> store = spectral.store.open("runs/demo")
>>> spec = A.principal_components(store, k=100)        # method chosen by size; exact Gram by default
>>> spec.to_frame()                                     # rank, eigenvalue, singular value, residual, energy
>>> A.rlc.summarize(A.rlc.in_sample(spec))              # G_k summaries per k
"""

from . import rlc
from .matrix import TrajectoryMatrix
from .pca import METHODS, Spectrum, principal_components
from .run import AnalyseConfig, analyse

__all__ = ["AnalyseConfig", "METHODS", "Spectrum", "TrajectoryMatrix", "analyse", "principal_components", "rlc"]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.api:analyse")  # sp.analyse(...): see spectral.entry
