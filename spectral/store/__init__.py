"""The trajectory store: one directory per run, rows of flattened gradients per step.

``open(path)`` reads a store (see :class:`Store`); :class:`StoreWriter` writes one.
"""

from .format import atomic_write
from .reader import Checkpoint, Param, Store, open, read_manifest
from .writer import StoreWriter, remove_store, write_matrix

__all__ = [
    "open",
    "Store",
    "Param",
    "StoreWriter",
    "Checkpoint",
    "read_manifest",
    "remove_store",
    "write_matrix",
    "atomic_write",
]
