"""Collect stage: DP fine-tuning that logs every step's flattened gradient to a store.

>>> from spectral.collect import CollectConfig, collect
>>> collect(CollectConfig(steps=50), "runs/small")
"""

from .config import CollectConfig
from .engine import DPEngine
from .privacy import PrivacyLedger, PrivacyPlan, plan_privacy
from .run import collect

__all__ = ["CollectConfig", "collect", "DPEngine", "PrivacyPlan", "PrivacyLedger", "plan_privacy"]
