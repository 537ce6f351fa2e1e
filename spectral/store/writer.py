"""Writing a trajectory store from a training loop: atomic shards, commits, resume.

All disk I/O happens on one background thread, in the order the loop asked for it, so
the loop never waits for the disk unless the queue is full. A *commit* is the only moment
the store changes meaning: shards first, then tables, then the training checkpoint, and
last the manifest (atomic rename). A crash at any instant therefore leaves the previous
manifest valid, with every step it lists stored exactly once, and a checkpoint that
continues from exactly that step.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save as st_save

from ..errors import SpectralError
from .format import (
    ATTACHMENTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    STEPS_TABLE,
    STORAGE_DTYPES,
    TILE_COLS,
    atomic_write,
    fsync_dir,
    fsync_file,
    open_temp,
    shard_path,
    storage_overflow,
    to_storage,
    write_json,
)
from .reader import Checkpoint, read_checkpoint, read_manifest


def npy_header(dtype, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_tiled(path: Path, rows: int, d: int, dtype, tile_cols: int, read, chunk_bytes: int = 64 * 2**20) -> str:
    """Write a shard in column tiles (see :mod:`spectral.store.format`) atomically at ``path``;
    returns its SHA-256. ``read(c0, c1)`` gives columns [c0, c1) of the shard's rows,
    shape (rows, c1 - c0) in storage dtype; it is asked for about ``chunk_bytes`` at a time."""
    dtype = np.dtype(dtype)
    chunk = max(tile_cols, chunk_bytes // max(rows * dtype.itemsize * tile_cols, 1) * tile_cols)
    digest = hashlib.sha256()
    f, tmp = open_temp(path)
    try:
        with f:
            header = npy_header(dtype, (rows * d,))
            f.write(header)
            for c0 in range(0, d, chunk):
                block = read(c0, min(c0 + chunk, d))
                for ta in range(0, block.shape[1], tile_cols):
                    data = memoryview(np.ascontiguousarray(block[:, ta : ta + tile_cols])).cast("B")
                    f.write(data)
                    digest.update(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


class _ShardFile:
    """A shard filled row by row: rows go straight to a temporary .npy file (no buffer copy)
    with a running SHA-256; :meth:`finish` fixes the header's row count and renames it, or,
    with ``tile_cols`` below d, rewrites it in column tiles (from the page cache, on the writer
    thread) so that analyses read it in long runs.

    Not fsynced here: the commit fsyncs every new shard before the manifest names it, so the
    kernel writes shards back while training runs instead of stalling the writer thread.
    """

    def __init__(self, path: Path, shape: tuple, dtype, tile_cols: int | None = None):
        self.tile_cols = tile_cols if tile_cols and tile_cols < shape[1] else None
        self.dtype, self.d = np.dtype(dtype), shape[1]
        self.file, self.tmp = open_temp(path)
        self.header = self._header(shape[0])
        self.file.write(self.header)
        self.hash = hashlib.sha256()

    def _header(self, rows: int) -> bytes:
        return npy_header(self.dtype, (rows, self.d))

    def append(self, row: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(row)).cast("B")
        self.file.write(data)
        self.hash.update(data)

    def finish(self, path: Path, rows: int) -> str:
        header = self._header(rows)
        # numpy pads .npy headers so the first axis can change in place (GROWTH_AXIS_MAX_DIGITS)
        if len(header) != len(self.header):
            raise RuntimeError(f"npy header length changed for {path.name}")
        self.file.seek(0)
        self.file.write(header)
        self.file.close()
        if self.tile_cols is None:
            os.replace(self.tmp, path)
            return self.hash.hexdigest()
        try:
            rowwise = np.load(self.tmp, mmap_mode="r", allow_pickle=False)
            return write_tiled(path, rows, self.d, self.dtype, self.tile_cols, lambda a, b: rowwise[:, a:b])
        finally:
            os.unlink(self.tmp)


class StoreWriter:
    """Append per-step rows of named streams to a store directory.

    Use :meth:`create` for a new store or :meth:`resume` for an interrupted one, then per
    step :meth:`append`, every so often :meth:`commit`, and finally :meth:`close`.

    Parameters are validated by the constructors; rows passed to :meth:`append` are
    float arrays of shape ``(d,)`` and must not be modified by the caller afterwards.
    """

    def __init__(self, root: Path, manifest: dict, tables: dict, queue_size: int = 4):
        self.root = Path(root)
        self._manifest = manifest
        self._tables = tables
        self._n_steps = manifest["n_steps"]  # next step the loop will append
        self._d = manifest["d"]
        self._dtype = manifest["dtype"]
        self._streams = list(manifest["streams"])
        self._shard_rows = manifest["shard_rows"]
        self._tile_cols = manifest.get("tile_cols")  # None: a version-1 store keeps row-major shards
        self._shards = list(manifest["shards"])  # written, committed or not
        self._unsynced: list[Path] = []  # shards written since the last commit
        self._open: dict = {}  # stream -> _ShardFile being filled
        self._buffer_start = self._n_steps
        self._buffer_count = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="spectral-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(
        cls,
        root,
        *,
        layout: list,
        streams: list,
        dtype: str,
        shard_rows: int,
        meta: dict,
        attachments: dict | None = None,
        tile_cols: int = TILE_COLS,
    ) -> StoreWriter:
        """Start a new store in ``root`` (which must be absent or empty).

        layout: list of ``{"name", "shape", "offset", "numel"}`` describing the flat vector.
        attachments: ``{name: {key: array}}`` fixed for the whole run (e.g. a frozen head), saved as
            ``attachments/<name>.safetensors`` and read back with :meth:`Store.attachment`.
        """
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise SpectralError(f"{root} is not empty")
        if dtype not in STORAGE_DTYPES:
            raise SpectralError(f"unknown storage dtype {dtype!r}; choose from {sorted(STORAGE_DTYPES)}")
        if not streams:
            raise SpectralError("at least one stream must be stored")
        d = sum(int(p["numel"]) for p in layout)
        if d == 0:
            raise SpectralError("the parameter layout is empty (no trainable parameters)")
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "d": d,
            "dtype": dtype,
            "streams": list(streams),
            "layout": layout,
            "shard_rows": int(shard_rows),
            "tile_cols": int(tile_cols),
            "n_steps": 0,
            "shards": [],
            "tables": [STEPS_TABLE],
            "checkpoint": None,
            **meta,
        }
        root.mkdir(parents=True, exist_ok=True)
        for name, tensors in (attachments or {}).items():
            arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
            atomic_write(root / ATTACHMENTS / f"{name}.safetensors", lambda f, a=arrays: f.write(st_save(a)))
        manifest["attachments"] = sorted(attachments or {})
        write_json(root / MANIFEST, manifest)
        return cls(root, manifest, {STEPS_TABLE: []})

    @classmethod
    def resume(cls, root) -> tuple[StoreWriter, Checkpoint | None]:
        """Reopen an interrupted store at its last commit, removing uncommitted files."""
        root = Path(root)
        manifest = read_manifest(root)
        n = manifest["n_steps"]
        listed = {
            f
            for sh in manifest["shards"]
            for f in (shard_path(s, sh["start"], sh["stop"]) for s in manifest["streams"])
        }
        for f in (root / "streams").glob("*/*"):
            if f.relative_to(root).as_posix() not in listed:
                f.unlink()  # orphan from a crash between writing a shard and committing it
        tables = {}
        for name in manifest["tables"]:
            path = root / f"{name}.csv"
            rows = pd.read_csv(path).to_dict("records") if path.exists() and path.stat().st_size else []
            tables[name] = [r for r in rows if r["step"] < n]
        checkpoint = read_checkpoint(root, manifest)
        for f in (root / "checkpoint").glob("state-*"):
            if not manifest["checkpoint"] or f.stem != Path(manifest["checkpoint"]).name:
                f.unlink()
        manifest["status"] = "running"
        return cls(root, manifest, tables), checkpoint

    # ------------------------------------------------------------------ loop side
    @property
    def n_steps(self) -> int:
        """Number of steps appended so far (committed or not)."""
        return self._n_steps

    def append(self, step: int, rows: dict, record: dict, ready=None) -> None:
        """Queue one step: ``rows[stream]`` of shape ``(d,)`` and its steps-table record.

        ready : optional callable the writer thread calls before it reads ``rows`` (e.g. to wait for
            an asynchronous device-to-host copy into them), so the caller need not wait.
        """
        if step != self._n_steps:
            raise ValueError(f"expected step {self._n_steps}, got {step}")
        if set(rows) != set(self._streams):
            raise ValueError(f"rows for streams {sorted(rows)}, store has {self._streams}")
        if ready is None:  # the values are here: refuse what the storage dtype would turn into inf
            for s, row in rows.items():
                peak = storage_overflow(row, self._dtype)
                if peak is not None:
                    raise SpectralError(
                        f"step {step}: stream {s!r} has a value {peak:.4g} that {self._dtype} "
                        f"storage cannot hold (it would become inf); the step is not stored"
                    )
        self._put(("row", step, rows, {"step": step, **record}, ready))
        self._n_steps += 1

    def log(self, table: str, record: dict) -> None:
        """Queue a record (with a ``step`` key) for another table, e.g. ``eval``."""
        self._put(("log", table, record))

    def commit(
        self, checkpoint: dict | None = None, checkpoint_meta: dict | None = None, status: str = "running"
    ) -> None:
        """Queue a commit of everything appended so far, with the training state to resume from."""
        self._put(("commit", checkpoint, checkpoint_meta, status))

    def close(self, status: str | None = None) -> None:
        """Wait for the queue to drain; optionally set the final ``status`` in the manifest."""
        self._put(("close", status))
        self._thread.join()
        self._raise_if_failed()

    def _put(self, item) -> None:
        self._raise_if_failed()
        if not self._thread.is_alive():
            raise RuntimeError("store writer is closed")
        self._queue.put(item)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise SpectralError(f"writing the store failed: {self._error}") from self._error

    # ------------------------------------------------------------------ writer thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if self._error is None:
                    getattr(self, f"_do_{item[0]}")(*item[1:])
            except BaseException as exc:  # surfaced on the loop's next call
                self._error = exc
            if item[0] == "close":
                return

    def _do_row(self, step, rows, record, ready) -> None:
        if ready is not None:
            ready()
        for s in self._streams:
            row = np.asarray(rows[s]).reshape(-1)
            if row.size != self._d:
                raise ValueError(f"stream {s!r}: row has {row.size} values, store has d={self._d}")
            if s not in self._open:
                path = self.root / shard_path(s, self._buffer_start, self._buffer_start + self._shard_rows)
                shape = (self._shard_rows, self._d)
                self._open[s] = _ShardFile(path, shape, STORAGE_DTYPES[self._dtype], self._tile_cols)
            self._open[s].append(to_storage(row, self._dtype))
        self._tables[STEPS_TABLE].append(record)
        self._buffer_count += 1
        if self._buffer_count == self._shard_rows:
            self._flush_shard()

    def _do_log(self, table, record) -> None:
        self._tables.setdefault(table, []).append(record)

    def _flush_shard(self) -> None:
        if self._buffer_count == 0:
            return
        start, stop = self._buffer_start, self._buffer_start + self._buffer_count
        files = {}
        for s in self._streams:
            path = self.root / shard_path(s, start, stop)
            files[s] = {"sha256": self._open.pop(s).finish(path, self._buffer_count)}
            self._unsynced.append(path)
        self._shards.append({"start": start, "stop": stop, "files": files})
        self._buffer_start, self._buffer_count = stop, 0

    def _do_commit(self, tensors, meta, status) -> None:
        self._flush_shard()
        for path in self._unsynced:
            fsync_file(path)
        for directory in {p.parent for p in self._unsynced}:
            fsync_dir(directory)
        self._unsynced.clear()
        n = self._buffer_start
        for name, rows in self._tables.items():
            frame = pd.DataFrame([r for r in rows if r["step"] < n])
            atomic_write(self.root / f"{name}.csv", lambda f, frame=frame: frame.to_csv(f, index=False))
        old = self._manifest["checkpoint"]
        if tensors is not None:
            base = f"checkpoint/state-{n:09d}"
            atomic_write(self.root / f"{base}.safetensors", lambda f: f.write(st_save(tensors)))
            write_json(self.root / f"{base}.json", meta or {})
            self._manifest["checkpoint"] = base
        self._manifest.update(n_steps=n, shards=list(self._shards), tables=sorted(self._tables), status=status)
        write_json(self.root / MANIFEST, self._manifest)  # the commit point
        if old and old != self._manifest["checkpoint"]:
            for suffix in (".safetensors", ".json"):
                (self.root / f"{old}{suffix}").unlink(missing_ok=True)

    def _do_close(self, status) -> None:
        if status is not None and status != self._manifest["status"]:
            self._manifest["status"] = status
            write_json(self.root / MANIFEST, self._manifest)


def remove_store(root) -> None:
    """Delete a store directory, refusing anything that is not a store (no manifest)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise SpectralError(f"{root} is not a spectral store; refusing to delete it")
    shutil.rmtree(root)


def write_tiles(shard, rows: np.ndarray, start: int, stop: int, d: int, tile: int) -> None:
    """Columns [start, stop) of a shard's ``rows`` (rows × (stop − start)) into the shard's flat buffer,
    which holds its rows × d values in column tiles of ``tile`` columns, as collect writes them."""
    n = shard.size // d
    for ta in range(start - start % tile, stop, tile):  # the tiles this block touches
        tw = min(tile, d - ta)
        lo, hi = max(start, ta), min(stop, ta + tw)
        region = shard[n * ta : n * (ta + tw)].reshape(n, tw)
        region[:, lo - ta : hi - ta] = rows[:, lo - start : hi - start]


def write_matrix(
    root,
    n: int,
    d: int,
    column_blocks,
    *,
    dtype: str = "float32",
    stream: str = "clipped",
    meta: dict | None = None,
    shard_rows: int | None = None,
    tile_cols: int = TILE_COLS,
) -> Path:
    """Write an (n, d) matrix given as ``(start, stop, block (n, stop-start))`` column blocks
    into a new store (for synthetic trajectories and imported gradients), in shards of
    ``shard_rows`` rows (default: one shard) stored in column tiles as collect writes them.

    Values beyond what ``dtype`` holds (e.g. above 65,504 in float16) are refused, as collect's
    writer refuses them, instead of being stored as inf.
    """
    root = Path(root)
    shard_rows = int(shard_rows or n)
    StoreWriter.create(root, layout=[{"name": stream, "shape": [d], "offset": 0, "numel": d}], streams=[stream],
                       dtype=dtype, shard_rows=shard_rows, meta=meta or {}, tile_cols=tile_cols).close()  # fmt: skip
    tile = min(int(tile_cols), d)
    starts = list(range(0, n, shard_rows))
    maps = []
    for a in starts:
        rows = min(a + shard_rows, n) - a
        path = root / shard_path(stream, a, a + rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        maps.append(np.lib.format.open_memmap(path, mode="w+", dtype=STORAGE_DTYPES[dtype], shape=(rows * d,)))
    for start, stop, block in column_blocks:
        block = np.asarray(block)
        peak = storage_overflow(block, dtype)
        if peak is not None or not np.all(np.isfinite(block)):
            remove_store(root)
            what = f"a value {peak:.4g} exceeds what {dtype} holds" if peak is not None else "non-finite values"
            raise SpectralError(f"write_matrix: columns [{start}, {stop}) hold {what}; nothing was written")
        stored = to_storage(block, dtype)
        for a, mm in zip(starts, maps):
            write_tiles(mm, stored[a : a + mm.size // d], start, stop, d, tile)
    shards = []
    for a, mm in zip(starts, maps):
        mm.flush()
        digest = hashlib.sha256(memoryview(mm).cast("B")).hexdigest()
        rows = mm.size // d
        fsync_file(root / shard_path(stream, a, a + rows))
        shards.append({"start": a, "stop": a + rows, "files": {stream: {"sha256": digest}}})
    del maps, mm
    manifest = read_manifest(root)
    manifest.update(n_steps=n, shards=shards, status="complete")
    write_json(root / MANIFEST, manifest)
    return root
