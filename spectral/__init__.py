"""spectral: spectra of differentially private gradients (Li et al. 2022).

Stages, data flowing one way: ``spectral.collect`` (DP fine-tuning that logs every
step's gradient) -> ``spectral.store`` (the on-disk trajectory) -> analyse -> report.
"""

__version__ = "0.1.0"
