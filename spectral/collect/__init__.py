"""Collect: DP fine-tuning that stores every step's flattened gradient in a trajectory store.

>>> from spectral.collect import CollectConfig, collect
>>> collect(CollectConfig(steps=50), "runs/demo")
"""

from ..dp import CollectConfig
from .run import collect, settings_that_differ

__all__ = ["CollectConfig", "collect", "settings_that_differ"]

from ..entry import make_callable  # noqa: E402

make_callable(__name__, "spectral.api:collect")  # sp.collect(...): see spectral.entry
