"""Report stage: power-law fits, the restricted-Lipschitz verdict, and the paper's figures."""

from .fits import dimension_curve, log_log_fit, range_table, rlc_fit, spectrum_fit
from .run import ReportConfig, report

__all__ = ["ReportConfig", "dimension_curve", "log_log_fit", "range_table", "report", "rlc_fit", "spectrum_fit"]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.api:report")  # sp.report(...): see spectral.entry
