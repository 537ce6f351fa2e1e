"""On-disk format of a trajectory store: manifest, shard names, dtypes, atomic writes.

A store is one directory::

    manifest.json                     single source of truth: what is committed
    steps.csv                         one row per committed step (loss, lr, epsilon, norms, ...)
    <table>.csv                       other per-step tables (e.g. eval.csv)
    streams/<stream>/<start>-<stop>.npy   rows [start, stop) of one stream, in column tiles (below)
    checkpoint/state-<step>.safetensors + .json   training state after <step> committed steps

Only what the manifest lists is part of the store; anything else (a shard written just
before a crash) is an orphan and is removed on resume.

Shard layout. The analyses read H (n_steps, d) in column blocks. In a row-major shard a column
block of width w is one run of w values per row: at the paper's shape (n = 4,000) a block that
fits in memory is read as 16 KB runs, an order of magnitude below the disk's sequential rate.
Format version 2 therefore stores each shard in *column tiles*: columns [t·T, (t+1)·T) of all the
shard's rows are contiguous (a (rows, T) row-major block), tile after tile, with T = ``tile_cols``
from the manifest (the last tile may be narrower). A column block that starts and ends on tile
boundaries is then one contiguous run of rows·w values per shard. A tiled shard is a 1-D ``.npy``
of rows·d values; a 2-D ``(rows, d)`` shard is row-major, the one-tile case (version 1 stores, and
shards not yet rewritten by ``python -m spectral.store retile``). So every shard says its layout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .. import jsonio
from ..layout import MANIFEST  # noqa: F401 (the store's manifest: named once, in layout)

FORMAT_NAME = "spectral-trajectory"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: row-major shards, no tile_cols
TILE_COLS = 4096  # 16 KiB of float32 per row and tile: row-sized writes, MiB-sized reads

STEPS_TABLE = "steps"
ATTACHMENTS = "attachments"  # fixed per-run tensors, one safetensors file each

# numpy has no bfloat16: it is stored as its raw 16 bits (uint16) and widened on read.
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def shard_path(stream: str, start: int, stop: int) -> str:
    """Path of a shard relative to the store root."""
    return f"streams/{stream}/{start:09d}-{stop:09d}.npy"


# the largest magnitude that rounds to a finite value in each storage dtype (beyond it: inf)
STORAGE_LIMITS = {
    "float32": float(np.finfo(np.float32).max),
    "float16": 65519.99,
    "bfloat16": float(np.float32(2**127 * (2 - 2**-8))),
}


def storage_overflow(row, dtype: str) -> float | None:
    """The largest |value| of ``row`` if it would overflow to inf in ``dtype``, else None."""
    peak = float(np.max(np.abs(row))) if np.size(row) else 0.0
    return peak if peak >= STORAGE_LIMITS[dtype] and np.isfinite(peak) else None


def to_storage(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float32 rows to the storage dtype (bfloat16: round-to-nearest-even bits)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if dtype != "bfloat16":
        return rows.astype(STORAGE_DTYPES[dtype], copy=False)
    bits = rows.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_storage(raw: np.ndarray, dtype: str, out_dtype=np.float32) -> np.ndarray:
    """Widen stored rows to ``out_dtype`` (always a fresh in-memory array)."""
    if dtype == "bfloat16":
        return (np.asarray(raw).astype(np.uint32) << 16).view(np.float32).astype(out_dtype, copy=False)
    return np.array(raw, dtype=out_dtype)


def fsync_dir(path: Path) -> None:
    fsync_file(path)  # a directory is fsynced through a read-only descriptor too


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def shard_rows_for(d: int, dtype: str, shard_mb: int, max_rows: int) -> int:
    """Rows per shard: about ``shard_mb`` MiB, at least 1, at most ``max_rows`` (the commit interval)."""
    row_bytes = d * np.dtype(STORAGE_DTYPES[dtype]).itemsize
    return int(np.clip(shard_mb * 2**20 // row_bytes, 1, max_rows))


def tile_runs(rows: int, d: int, tile_cols: int, r0: int, r1: int, c0: int, c1: int):
    """The contiguous runs that hold rows [r0, r1) x columns [c0, c1) of a shard of ``rows`` rows
    stored in tiles of ``tile_cols`` columns (``tile_cols >= d``: row-major).

    Yields ``(element offset in the shard, row, column offset in the block, length)``, in file
    order; runs that touch in the file are merged by :func:`read_runs`.
    """
    if c1 <= c0:
        return  # no columns: a zero-length read would look like the end of the file
    for ta in range(c0 - c0 % tile_cols, c1, tile_cols):
        tw = min(tile_cols, d - ta)
        lo, hi = max(c0, ta), min(c1, ta + tw)
        base = rows * ta  # every earlier tile is full width
        for r in range(r0, r1):
            yield base + r * tw + (lo - ta), r - r0, lo - c0, hi - lo


def read_runs(fd: int, offset: int, runs, out: np.ndarray) -> None:
    """Fill ``out`` (rows, width), C-contiguous, from ``runs`` of :func:`tile_runs` (elements of
    ``out.dtype``) in a file whose data starts at byte ``offset``: runs adjacent in the file are
    read with one ``preadv`` into the matching slices of ``out`` (scatter, no copy)."""
    item, width = out.dtype.itemsize, out.shape[1]
    flat = memoryview(out.reshape(-1)).cast("B")
    batch, start, end = [], None, None

    def flush():
        if batch:
            _preadv_all(fd, batch, offset + start * item)

    for pos, r, c, length in runs:
        view = flat[(r * width + c) * item : (r * width + c + length) * item]
        if end == pos and len(batch) < IOV_MAX:
            batch.append(view)
            end += length
        else:
            flush()
            batch, start, end = [view], pos, pos + length
    flush()


IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _preadv_all(fd: int, views: list, pos: int) -> None:
    """preadv until every view is full (a short read continues where it stopped)."""
    while views:
        got = os.preadv(fd, views, pos)
        if got == 0:
            raise OSError("file ended early (truncated shard)")
        pos += got
        while views and got >= len(views[0]):
            got -= len(views[0])
            views = views[1:]
        if views and got:
            views = [views[0][got:], *views[1:]]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_temp(path: Path):
    """``(binary file, its path)``: a new temporary file beside ``path``, to be renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; store files are ordinary files
    return os.fdopen(fd, "wb"), tmp


def atomic_write(path: Path, write, durable: bool = True) -> None:
    """Write a file so that readers see the old content or the new, never a mix.

    ``write(fileobj)`` fills a temporary file in the same directory, which is renamed over
    ``path``. With ``durable`` the file and its directory are fsynced so the result survives
    a crash; without, the caller must :func:`fsync_file` it before relying on it.
    """
    path = Path(path)
    f, tmp = open_temp(path)
    try:
        with f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(jsonio.dumps(obj, indent=1, sort_keys=False).encode()))
