"""Rewriting a store's shards in column tiles (format version 1 → 2), in place and resumable.

``python -m spectral.store retile RUN_DIR`` turns every row-major shard into the tiled layout that
analyses read in long runs (see :mod:`spectral.store.format`). The values do not change. Each shard
is rewritten atomically (temporary file, fsync, rename) and the manifest is updated after each one,
so an interruption leaves a readable store and a rerun continues with the shards still row-major.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..errors import SpectralError
from .format import FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, TILE_COLS, fsync_dir, fsync_file, shard_path, write_json
from .reader import Store
from .writer import write_tiled


def retile(root, tile_cols: int | None = None, progress: bool = True, force: bool = False) -> int:
    """Rewrite the row-major shards of the store at ``root`` in tiles of ``tile_cols`` columns
    (default: the store's own, else :data:`TILE_COLS`); returns how many files were rewritten."""
    store = Store(root)
    manifest = store.manifest
    if manifest["status"] == "running" and not force:
        raise SpectralError(
            f"{root} is marked running (a collect job may be writing it); stop it first, or pass --force if it crashed"
        )
    current = manifest.get("tile_cols")
    if current and tile_cols and tile_cols != current:
        raise SpectralError(f"{root} is already tiled with tile_cols={current}; retile keeps one tile width per store")
    tile_cols = int(tile_cols or current or TILE_COLS)
    if tile_cols < 1:
        raise SpectralError(f"tile_cols must be positive, got {tile_cols}")
    manifest.update(format_version=FORMAT_VERSION, tile_cols=tile_cols)  # row-major shards stay readable
    write_json(store.root / MANIFEST, manifest)
    storage = STORAGE_DTYPES[store.dtype]
    todo = [
        (i, s, sh)
        for i, sh in enumerate(manifest["shards"])
        for s, (_, _, arr) in zip(store.streams, [store.shards(s)[i] for s in store.streams])
        if arr.ndim == 2 and tile_cols < store.d
    ]
    for i, s, sh in tqdm(todo, desc="retile", unit="shard", disable=not progress):
        path = store.root / shard_path(s, sh["start"], sh["stop"])
        rows = sh["stop"] - sh["start"]

        def read(a, b, s=s, sh=sh):
            return store.block(s, sh["start"], sh["stop"], a, b, dtype=storage)

        digest = write_tiled(path, rows, store.d, np.dtype(storage), tile_cols, read)
        fsync_file(path)
        fsync_dir(path.parent)
        manifest["shards"][i]["files"][s]["sha256"] = digest
        write_json(store.root / MANIFEST, manifest)
    store.close()
    return len(todo)
