"""Reading a trajectory store: memory-mapped shards, row and column blocks, tables.

>>> store = spectral.store.open("runs/demo")
>>> store.n_steps, store.d, store.streams
>>> H = store.rows("clipped", 0, 100)           # (100, d) float32
>>> C = store.columns("clipped", 0, 10_000)     # (n_steps, 10_000) float32
>>> store.steps                                 # pandas DataFrame, one row per step
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from ..errors import SpectralError
from .format import (
    ATTACHMENTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    READABLE_VERSIONS,
    STEPS_TABLE,
    STORAGE_DTYPES,
    from_storage,
    read_runs,
    shard_path,
    tile_runs,
)


def read_manifest(root) -> dict:
    """Load and check ``manifest.json``; any problem is one clear :class:`SpectralError`."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise SpectralError(f"{root}: no such store directory")
    if not path.is_file():
        raise SpectralError(f"{root} is not a spectral store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpectralError(f"{path} is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SpectralError(f"{path} is not a spectral trajectory manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise SpectralError(
            f"{path} has format version {manifest.get('format_version')}; this spectral reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (it writes {FORMAT_VERSION}): upgrade spectral to read it"
        )
    return manifest


@dataclass
class Checkpoint:
    """Training state saved with a commit: named arrays plus JSON metadata."""

    step: int
    tensors: dict
    meta: dict


def read_checkpoint(root, manifest: dict) -> Checkpoint | None:
    """The checkpoint of the manifest's last commit (safetensors, no pickle); None before any commit."""
    if not manifest.get("checkpoint"):
        return None
    base = Path(root) / manifest["checkpoint"]
    try:
        tensors = st_load(base.with_suffix(".safetensors").read_bytes())
        meta = json.loads(base.with_suffix(".json").read_text())
    except (OSError, ValueError, SafetensorError) as exc:
        raise SpectralError(f"{root}: checkpoint {base.name} is unreadable ({exc})") from None
    return Checkpoint(step=manifest["n_steps"], tensors=tensors, meta=meta)


@dataclass(frozen=True)
class Param:
    """One trained tensor inside the flat gradient vector: ``row[offset:offset+numel].reshape(shape)``."""

    name: str
    shape: tuple
    offset: int
    numel: int


def shard_geometry(arr: np.ndarray, d: int, tile_cols: int) -> tuple[int, int]:
    """(rows, tile width) of a shard: a 2-D shard is row-major (one tile), a 1-D one tiled."""
    if arr.ndim == 2:
        return arr.shape[0], d
    return arr.shape[0] // d, tile_cols


class ShardReader:
    """One shard as a lazily read, picklable array-like (shape, dtype, ``__getitem__``): what
    ``dask.array.from_array`` needs to read chunks on the workers, without copying the store."""

    def __init__(self, path, offset: int, shape: tuple, tile_cols: int, storage: str, dtype=np.float32):
        self.path, self.offset, self.shape, self.storage = str(path), int(offset), tuple(shape), storage
        self.tile_cols, self.dtype, self.ndim = int(tile_cols), np.dtype(dtype), 2

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        if rs != 1 or cs != 1:
            raise IndexError("a ShardReader reads contiguous blocks only")
        raw = np.empty((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=STORAGE_DTYPES[self.storage])
        if raw.size:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                runs = tile_runs(self.shape[0], self.shape[1], self.tile_cols, r0, r1, c0, c1)
                read_runs(fd, self.offset, runs, raw)
            finally:
                os.close(fd)
        return from_storage(raw, self.storage, self.dtype)


class Store:
    """A read-only view of a trajectory store (use :func:`spectral.store.open`).

    Attributes
    ----------
    n_steps : int           committed steps (rows of every stream)
    d : int                 length of one flattened gradient
    streams : list[str]     e.g. ``["clipped", "private"]``
    dtype : str             storage dtype; reads widen to float32 unless told otherwise
    layout : list[Param]    how a row maps back to named parameter tensors
    manifest : dict         everything recorded about the run (model, data, DP settings, ...)
    """

    def __init__(self, root, verify: bool = False):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        m = self.manifest
        self.n_steps: int = m["n_steps"]
        self.d: int = m["d"]
        self.streams: list = list(m["streams"])
        self.dtype: str = m["dtype"]
        self.layout = [Param(p["name"], tuple(p["shape"]), p["offset"], p["numel"]) for p in m["layout"]]
        self.tile_cols: int = int(m.get("tile_cols") or self.d)  # version 1: row-major
        self._shards = m["shards"]
        self._starts = np.array([s["start"] for s in self._shards], dtype=np.int64)
        self._maps = {s: [self._open_shard(s, sh) for sh in self._shards] for s in self.streams}
        self._scratch_buf = np.empty(0, dtype=np.uint8)
        self._fds: dict = {}  # shard path -> open descriptor (pread is safe from several threads)
        if verify:
            self.verify()

    def _open_shard(self, stream: str, shard: dict) -> np.memmap:
        rel = shard_path(stream, shard["start"], shard["stop"])
        path = self.root / rel
        if not path.is_file():
            raise SpectralError(f"{self.root}: shard {rel} is missing")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SpectralError(f"{self.root}: shard {rel} is truncated or corrupt ({exc})") from None
        expected = (shard["stop"] - shard["start"], self.d)
        shape = arr.shape if arr.ndim == 2 else (arr.size // self.d, self.d) if arr.size % self.d == 0 else arr.shape
        if shape != expected or arr.dtype != np.dtype(STORAGE_DTYPES[self.dtype]):
            raise SpectralError(
                f"{self.root}: shard {rel} holds {arr.dtype}{list(shape)}, manifest says {self.dtype}{list(expected)}"
            )
        return arr

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close the shard files kept open for reading (reopened on the next read)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def shard_tiles(self, stream: str) -> list[tuple[int, int, int]]:
        """``(start, stop, tile width)`` per shard of ``stream``: a column block aligned to the tile
        width is read as one contiguous run per shard (see :mod:`spectral.store.format`)."""
        return [(a, b, shard_geometry(arr, self.d, self.tile_cols)[1]) for a, b, arr in self.shards(stream)]

    def drop_cache(self, stream: str | None = None) -> None:
        """Ask the kernel to drop the page cache of the shard files (``posix_fadvise(DONTNEED)``),
        so the next read comes from the disk: how benchmarks measure a cold read."""
        for s in [stream] if stream else self.streams:
            for _, _, arr in self.shards(s):
                fd = os.open(arr.filename, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    @property
    def dtype_numpy(self) -> np.dtype:
        """The dtype of the stored values as numpy holds them (bfloat16: its raw 16 bits, uint16)."""
        return np.dtype(STORAGE_DTYPES[self.dtype])

    def __repr__(self) -> str:
        return (
            f"Store({str(self.root)!r}, n_steps={self.n_steps}, d={self.d}, streams={self.streams}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ integrity
    def verify(self) -> None:
        """Check every shard's content against the checksum recorded at write time."""
        for s in self.streams:
            for sh, arr in zip(self._shards, self._maps[s]):
                digest = hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()
                if digest != sh["files"][s]["sha256"]:
                    rel = shard_path(s, sh["start"], sh["stop"])
                    raise SpectralError(f"{self.root}: shard {rel} is corrupt (checksum mismatch)")

    # ------------------------------------------------------------------ data access
    def check_stream(self, stream: str) -> None:
        if stream not in self.streams:
            raise SpectralError(f"unknown stream {stream!r}; this store has {self.streams}")

    def shards(self, stream: str) -> list[tuple[int, int, np.memmap]]:
        """``(start, stop, raw memmap)`` per shard, in storage dtype: shape (stop-start, d) for a
        row-major shard, (rows·d,) in column tiles for a tiled one (read it with :meth:`block`)."""
        self.check_stream(stream)
        return [(sh["start"], sh["stop"], arr) for sh, arr in zip(self._shards, self._maps[stream])]

    def rows(self, stream: str, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        """Rows ``[start, stop)`` of a stream as an in-memory array of shape ``(stop-start, d)``."""
        return self.block(stream, start, stop, 0, self.d, dtype)

    def columns(self, stream: str, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        """Columns ``[start, stop)`` of every step, shape ``(n_steps, stop-start)``."""
        return self.block(stream, 0, self.n_steps, start, stop, dtype)

    def block(
        self,
        stream,
        row_start=0,
        row_stop=None,
        col_start=0,
        col_stop=None,
        dtype=np.float32,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The sub-matrix ``H[row_start:row_stop, col_start:col_stop]`` widened to ``dtype``.

        ``out``: a C-contiguous array of that shape and dtype to fill (reusing one buffer across
        blocks avoids fresh-memory page faults on every read). Not for concurrent calls on one Store.
        """
        self.check_stream(stream)
        row_stop = self.n_steps if row_stop is None else row_stop
        col_stop = self.d if col_stop is None else col_stop
        if not (0 <= row_start <= row_stop <= self.n_steps and 0 <= col_start <= col_stop <= self.d):
            raise SpectralError(
                f"block rows [{row_start}, {row_stop}) cols [{col_start}, {col_stop}) is outside ({self.n_steps}, {self.d})"
            )
        shape = (row_stop - row_start, col_stop - col_start)
        if out is None:
            out = np.empty(shape, dtype=dtype)
        elif out.shape != shape or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {np.dtype(dtype)} array of shape {shape}")
        stored = np.dtype(STORAGE_DTYPES[self.dtype])
        for start, stop, arr in self.shards(stream):
            lo, hi = max(start, row_start), min(stop, row_stop)
            if lo < hi:
                dest = out[lo - row_start : hi - row_start]
                rows, tile = shard_geometry(arr, self.d, self.tile_cols)
                runs = tile_runs(rows, self.d, tile, lo - start, hi - start, col_start, col_stop)
                raw = dest if stored == out.dtype else self._scratch(stored, (hi - lo, shape[1]))
                try:
                    read_runs(self._fd(arr.filename), arr.offset, runs, raw)
                except OSError as exc:
                    raise SpectralError(f"{arr.filename}: {exc}") from None
                if raw is not dest:
                    dest[:] = from_storage(raw, self.dtype, dtype) if self.dtype == "bfloat16" else raw
        return out

    def _scratch(self, dtype, shape) -> np.ndarray:
        """A reused raw read buffer (grown on demand)."""
        size = int(np.prod(shape)) * dtype.itemsize
        if self._scratch_buf.size < size:
            self._scratch_buf = np.empty(size, dtype=np.uint8)
        return self._scratch_buf[:size].view(dtype).reshape(shape)

    def to_dask(self, stream: str, block_cols: int | None = None, dtype=np.float32):
        """The stream as a ``dask.array`` of shape (n_steps, d), chunked as shards × column blocks.

        Nothing is copied: each chunk is read (pread) by whichever worker computes with it, so the
        store must be on a file system the workers share. ``block_cols`` defaults to ~64 MiB chunks.
        """
        import dask.array as da

        self.check_stream(stream)
        parts = []
        for start, stop, arr in self.shards(stream):
            rows = stop - start
            cols = block_cols or max(1, min(self.d, (64 * 2**20) // (max(rows, 1) * np.dtype(dtype).itemsize)))
            _, tile = shard_geometry(arr, self.d, self.tile_cols)
            reader = ShardReader(arr.filename, arr.offset, (rows, self.d), tile, self.dtype, dtype)
            parts.append(
                da.from_array(
                    reader,
                    chunks=(rows, cols),
                    asarray=False,
                    fancy=False,
                    name=f"spectral-{stream}-{arr.filename}-{cols}-{np.dtype(dtype).name}",
                )
            )
        return da.concatenate(parts, axis=0) if parts else da.zeros((0, self.d), dtype=dtype)

    def iter_row_blocks(self, stream: str, block_rows: int, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` for consecutive row blocks of at most ``block_rows`` steps."""
        for start in range(0, self.n_steps, block_rows):
            yield start, self.rows(stream, start, min(start + block_rows, self.n_steps), dtype)

    def iter_column_blocks(self, stream: str, block_cols: int, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, columns)`` for consecutive column blocks of shape ``(n_steps, <=block_cols)``."""
        for start in range(0, self.d, block_cols):
            yield start, self.columns(stream, start, min(start + block_cols, self.d), dtype)

    def unflatten(self, row: np.ndarray) -> dict:
        """Map a flat row of shape ``(d,)`` back to ``{parameter name: array of its shape}``."""
        row = np.asarray(row)
        if row.shape != (self.d,):
            raise SpectralError(f"row has shape {row.shape}, expected ({self.d},)")
        return {p.name: row[p.offset : p.offset + p.numel].reshape(p.shape) for p in self.layout}

    # ------------------------------------------------------------------ training state
    @cached_property
    def checkpoint(self) -> Checkpoint:
        """The training state of the last commit (read once)."""
        checkpoint = read_checkpoint(self.root, self.manifest)
        if checkpoint is None:
            raise SpectralError(f"{self.root} has no checkpoint (no step was committed)")
        return checkpoint

    def attachment(self, name: str) -> dict:
        """A fixed tensor set saved at creation (see :meth:`StoreWriter.create`), ``{key: array}``."""
        path = self.root / ATTACHMENTS / f"{name}.safetensors"
        if name not in self.manifest.get("attachments", []) or not path.is_file():
            raise SpectralError(f"{self.root} has no attachment {name!r}")
        try:
            return st_load(path.read_bytes())
        except SafetensorError as exc:
            raise SpectralError(f"{path} is corrupt: {exc}") from None

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> pd.DataFrame:
        """A per-step table (``steps``, ``eval``, ...) restricted to committed steps."""
        path = self.root / f"{name}.csv"
        if name not in self.manifest["tables"]:
            raise SpectralError(f"{self.root} has no table {name!r}; it has {self.manifest['tables']}")
        # a declared table is written with its first row: empty until then
        frame = pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame({"step": []})
        return frame[frame["step"] < self.n_steps].reset_index(drop=True)

    @cached_property
    def steps(self) -> pd.DataFrame:
        """One row per committed step: step, loss, lr, epsilon, norms, fraction clipped, ..."""
        return self.table(STEPS_TABLE)

    @property
    def layout_frame(self) -> pd.DataFrame:
        """The parameter layout as a DataFrame (name, shape, offset, numel)."""
        return pd.DataFrame([p.__dict__ for p in self.layout])


def open(path, verify: bool = False) -> Store:  # noqa: A001 - mirrors the builtin on purpose
    """Open a trajectory store read-only.

    Checks the manifest and every shard's header and size (a truncated or damaged shard is a
    clear :class:`SpectralError`); ``verify=True`` also checks every shard's SHA-256.
    """
    return Store(path, verify=verify)
