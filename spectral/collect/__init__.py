"""Collect: DP fine-tuning that stores every step's flattened gradient in a trajectory store.

>>> from spectral.collect import CollectConfig, collect
>>> collect(CollectConfig(steps=50), "runs/demo")
"""

from ..dp import CollectConfig
from .run import collect

__all__ = ["CollectConfig", "collect"]
