"""The DP layer shared by collect, retrain and the benchmarks: models and objectives, data, privacy
planning and accounting (Opacus), the DP engine (per-example clipping, noise), training setup.

>>> from spectral.dp import CollectConfig, prepare
>>> t = prepare(CollectConfig(steps=10))        # data, model, privacy plan and engine
>>> out = t.engine.step(t.chunks(0), lr=5e-4)   # one DP step: out.clipped, out.private
"""

from .config import CollectConfig
from .engine import DPEngine, NonFiniteGradient
from .privacy import PrivacyLedger, PrivacyPlan, plan_privacy
from .training import Training, prepare

__all__ = [
    "CollectConfig",
    "DPEngine",
    "NonFiniteGradient",
    "PrivacyLedger",
    "PrivacyPlan",
    "Training",
    "plan_privacy",
    "prepare",
]
