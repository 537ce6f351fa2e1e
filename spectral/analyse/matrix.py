"""A gradient trajectory as a matrix H of shape (n_steps, d), read in column blocks.

Every product the analyse stage needs is one pass over column blocks of H, written once here:
``gram`` (H Hᵀ), ``rmatmat`` (Hᵀ U, written block by block), ``matmat`` (H V), ``hht`` (H Hᵀ Q)
and ``norms``. Where the arithmetic runs is an :mod:`~spectral.analyse.backends` adaptor: numpy on
the host, torch on a device, or dask on a cluster; accumulation is in float64 on all three.
``passes`` counts full reads of the data.

Reads. A column block of width w is read as one run per shard when the store is tiled and w is a
multiple of its tile width (:mod:`spectral.store.format`): so the read width is a multiple of the
tile, up to ``READ_BYTES`` per buffer, and the float64 arithmetic walks it in narrower sub-blocks.
A background thread reads the next block into the other of two buffers while this one is used.

Memory of a pass, independent of d: two read buffers (2 · n · w · itemsize) plus one float64
sub-block and its product (2 · n · c · 8), with w and c set from ``max_memory``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import SpectralError
from ..store import atomic_write
from ..store.format import STORAGE_DTYPES
from .backends import HostOps, make_ops

READ_BYTES = 256 * 2**20  # per read buffer: wide enough for MiB runs at n = 4,000, small beside RAM
COMPUTE_BYTES = 128 * 2**20  # per float64 sub-block: larger buys no GEMM speed, only page faults


def default_memory() -> int:
    """Bytes the analyse stage may use when not told: a quarter of the memory available now."""
    import psutil

    return int(psutil.virtual_memory().available // 4)


def trajectory_matrix(source, stream="clipped", rows=None, max_memory=None, progress=False, client=None, device=None):
    """The matrix a solver works on: ``source`` itself if it is one already, else a
    :class:`TrajectoryMatrix` whose passes run on the dask ``client``, on ``device`` (a
    ``torch.device``; CUDA runs torch there), or with numpy on the host."""
    if isinstance(source, TrajectoryMatrix):
        return source
    return TrajectoryMatrix(
        source, stream, rows=rows, max_memory=max_memory, progress=progress, ops=make_ops(device, client)
    )


def block_widths(n_all: int, n: int, d: int, itemsize: int, tile: int, budget: int) -> tuple[int, int]:
    """(read width w, compute width c) in columns for a budget of ``budget`` bytes.

    Two read buffers of n_all · w · itemsize take at most half the budget (and ``READ_BYTES``
    each); w is rounded down to a multiple of the tile width when one tile fits. The float64
    sub-block and its product, 2 · n · c · 8 bytes, take at most the other half.
    """
    w = max(1, min(budget // 4, READ_BYTES) // (n_all * itemsize))
    if tile < d and w >= tile:
        w -= w % tile
    c = max(1, min(budget // 4, COMPUTE_BYTES) // (max(n, 1) * 8))
    return int(min(w, d)), int(min(c, w, d))


class TrajectoryMatrix:
    """H (n, d) from a :class:`spectral.store.Store` stream or an in-memory array.

    Parameters
    ----------
    source : Store or ndarray of shape (n, d)
    stream : stream name (for a Store), or several: their rows stacked, stream after stream
        (``("clipped", "sampling")`` is [H; Δ], shape (2 n_steps, d))
    rows : optional index array selecting a subset of steps (e.g. a held-out split)
    max_memory : bytes for block buffers; sets the block widths (default: a quarter of the
        available RAM)
    progress : show a progress bar per pass
    ops : where the arithmetic runs (:func:`spectral.analyse.backends.make_ops`; default numpy)
    before_pass : called at the start of every pass (benchmarks drop the page cache there)
    groups : ``{name: [(start, stop), ...]}`` column ranges partitioning 0…d: :meth:`gram` also keeps
        one Gram matrix per group (:func:`spectral.analyse.groups.column_groups`)

    Attributes
    ----------
    passes : full reads of the data so far
    io : ``{"bytes", "read_seconds", "wait_seconds", "pass_seconds"}``: bytes read from the store,
        time the reader thread spent reading them, time the arithmetic waited for a block, and the
        wall time of the passes (reads and arithmetic, overlapped)
    """

    def __init__(
        self,
        source,
        stream: str = "clipped",
        rows=None,
        max_memory: int | None = None,
        progress=False,
        ops=None,
        before_pass=None,
        groups: dict | None = None,
    ):
        self.source, self.stream, self.progress, self.before_pass = source, stream, progress, before_pass
        self.groups, self.group_grams = groups, None
        self.streams = (stream,) if isinstance(stream, str) else tuple(stream)
        self.ops = ops or HostOps()
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise SpectralError(f"a trajectory matrix must be 2-D, got shape {source.shape}")
            n_all, self.d = source.shape
            self.storage, tile = source.dtype, self.d
        else:
            for s in self.streams:
                source.check_stream(s)
            n_all, self.d = source.n_steps * len(self.streams), source.d
            self.storage = np.dtype(STORAGE_DTYPES[source.dtype])
            tile = min((t for s in self.streams for _, _, t in source.shard_tiles(s)), default=self.d)
        self.n_all = n_all
        self.rows = np.arange(n_all) if rows is None else np.asarray(rows)
        self.n = len(self.rows)
        if self.n == 0 or self.d == 0:
            raise SpectralError(f"the trajectory is empty (n={self.n}, d={self.d})")
        budget = default_memory() if max_memory is None else int(max_memory)
        self.block_cols, self.compute_cols = block_widths(n_all, self.n, self.d, self.storage.itemsize, tile, budget)
        self.compute_cols = self.ops.compute_width(self.block_cols, self.compute_cols)
        self.passes = 0
        self.io = {"bytes": 0, "read_seconds": 0.0, "wait_seconds": 0.0, "pass_seconds": 0.0}

    @property
    def shape(self) -> tuple:
        return (self.n, self.d)

    def buffer_bytes(self) -> int:
        """Peak bytes of one pass's block buffers (the formula in the module docstring)."""
        return 2 * self.n_all * self.block_cols * self.storage.itemsize + 2 * self.n * self.compute_cols * 8

    @cached_property
    def identity(self) -> str:
        """What the data is: store, its committed steps, stream and row subset (for checkpoints)."""
        if isinstance(self.source, np.ndarray):
            src = hashlib.sha256(memoryview(np.ascontiguousarray(self.source)).cast("B")).hexdigest()
        else:
            m = self.source.manifest
            src = f"{self.source.root.resolve()}|{m['created']}|{m['n_steps']}"
        rows = hashlib.sha256(self.rows.astype(np.int64).tobytes()).hexdigest()
        groups = self.groups
        tag = "|groups:" + hashlib.sha256(repr(sorted(groups.items())).encode()).hexdigest() if groups else ""
        return f"{src}|{self.stream}|{rows}|{self.d}{tag}"

    # ------------------------------------------------------------------ reading
    def _spans(self, start_col: int) -> list:
        return [(a, min(a + self.block_cols, self.d)) for a in range(start_col, self.d, self.block_cols)]

    def _raw_blocks(self, spans):
        """Yield the stored values of each span, shape (n_all, width), read one block ahead."""
        if isinstance(self.source, np.ndarray):
            for start, stop in spans:
                yield self.source[:, start:stop]
            return
        buffers = [self.ops.host_buffer(self.n_all * self.block_cols, self.storage) for _ in range(min(2, len(spans)))]

        steps = self.source.n_steps

        def read(i):
            start, stop = spans[i]
            out = buffers[i % 2][: self.n_all * (stop - start)].reshape(self.n_all, stop - start)
            t0 = time.perf_counter()
            for j, s in enumerate(self.streams):  # stacked: stream j fills rows [j n, (j + 1) n)
                self.source.block(s, 0, steps, start, stop, dtype=self.storage, out=out[j * steps : (j + 1) * steps])
            self.io["read_seconds"] += time.perf_counter() - t0
            self.io["bytes"] += out.nbytes
            return out

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read, 0) if spans else None
            for i in range(len(spans)):
                t0 = time.perf_counter()
                raw = ahead.result()
                self.io["wait_seconds"] += time.perf_counter() - t0
                if self.ops.copies_host_blocks:  # the block is on the device now: its buffer is free
                    block = self.ops.to_device(raw)
                    ahead = pool.submit(read, i + 1) if i + 1 < len(spans) else None
                    yield block
                else:  # the buffer is in use until the consumer asks for the next block
                    ahead = pool.submit(read, i + 1) if i + 1 < len(spans) else None
                    yield raw

    def blocks(self, desc: str = "pass", start_col: int = 0, dtype=np.float64):
        """Yield ``(start, stop, H[rows, start:stop])`` as ``dtype`` arrays of the backend; one call
        = one pass. A yielded block is valid until the next one is requested."""
        self.passes += 1
        if self.before_pass is not None:
            self.before_pass()
        if self.ops.lazy:  # dask: the blocks are views of the store's dask array
            yield from self.ops.blocks(self, start_col, dtype)
            return
        spans = self._spans(start_col)
        storage = None if isinstance(self.source, np.ndarray) else self.source.dtype
        t0 = time.perf_counter()
        with tqdm(
            total=self.d - start_col, desc=desc, unit="col", unit_scale=True, disable=not self.progress, leave=False
        ) as bar:
            for (start, stop), raw in zip(spans, self._raw_blocks(spans)):
                for a in range(0, stop - start, self.compute_cols):
                    b = min(a + self.compute_cols, stop - start)
                    yield start + a, start + b, self.ops.widen(raw, a, b, self.rows, self.n_all, storage, dtype)
                bar.update(stop - start)
        self.io["pass_seconds"] += time.perf_counter() - t0

    # ------------------------------------------------------------------ products
    def gram(self, checkpoint: Path | None = None, every_s: float = 60.0) -> np.ndarray:
        """H Hᵀ, shape (n, n), float64.

        With ``checkpoint`` (a path stem), the partial sum is saved every ``every_s`` seconds
        and at the end; a later call on the same data continues from it (or reuses it whole).
        With :attr:`groups` set (``{name: [(start, stop), ...]}``, column ranges partitioning 0…d),
        the pass accumulates one Gram matrix per group instead, keeps them in :attr:`group_grams`
        and returns their sum: the same arithmetic and reads as without groups.
        """
        ops, groups = self.ops, self.groups
        checkpoint = checkpoint if ops.checkpoints else None
        shape = (self.n, self.n) if not groups else (len(groups), self.n, self.n)
        G, start = ops.zeros(shape), 0
        saved = load_checkpoint(checkpoint, self.identity) if checkpoint else None
        if saved is not None and tuple(saved["array"].shape) == shape:
            G, start = ops.asarray(saved["array"]), saved["next_col"]
        ranges = [(g, a, b) for g, spans in enumerate((groups or {}).values()) for a, b in spans]
        last = time.monotonic()
        for begin, stop, B in self.blocks("gram", start_col=start) if start < self.d else ():
            if not groups:
                G += B @ B.T
            for g, a, b in ranges:  # the group's columns inside this block
                lo, hi = max(a, begin) - begin, min(b, stop) - begin
                if lo < hi:
                    part = B[:, lo:hi]
                    G[g] += part @ part.T
            if checkpoint and (time.monotonic() - last >= every_s or stop == self.d):
                save_checkpoint(checkpoint, self.identity, ops.to_host(G), next_col=stop)
                last = time.monotonic()
        G = ops.to_host(G)
        if not groups:
            return G
        self.group_grams = dict(zip(groups, G))
        return G.sum(0)

    def rmatmat(self, U: np.ndarray, out=None, scale=None, dtype=np.float64) -> np.ndarray:
        """Hᵀ U diag(scale) (d, k), written block by block into ``out`` (e.g. a memmap).

        ``dtype=np.float32`` halves the work of this tall-skinny product where the result is
        stored in float32 anyway (the eigenvector pass).
        """
        U = self.ops.asarray(np.asarray(U if scale is None else U * scale), dtype=dtype)
        out = np.empty((self.d, U.shape[1]), dtype=dtype) if out is None else out
        for start, stop, B in self.blocks("H^T U", dtype=dtype):
            self.ops.write(out, start, stop, B.T @ U)
        self.ops.finish_writes(out)
        return out

    def matmat(self, V) -> np.ndarray:
        """H V (n, k) for V of shape (d, k) (may be a memmap; read block by block)."""
        out = self.ops.zeros((self.n, V.shape[1]))
        for start, stop, B in self.blocks("H V"):
            out += B @ self.ops.asarray(np.asarray(V[start:stop]))
        return self.ops.to_host(out)

    def hht(self, Q: np.ndarray) -> np.ndarray:
        """H Hᵀ Q (n, l) in one pass, without forming H Hᵀ."""
        Q = self.ops.asarray(Q)
        out = self.ops.zeros(tuple(Q.shape))
        for _, _, B in self.blocks("H H^T Q"):
            out += B @ (B.T @ Q)
        return self.ops.to_host(out)

    def norms(self) -> tuple[np.ndarray, float]:
        """(‖g_t‖² for every step (n,), ‖mean step‖²) in one pass."""
        sq, mean_sq = self.ops.zeros((self.n,)), self.ops.zeros(())
        for _, _, B in self.blocks("norms"):
            sq += (B * B).sum(1)
            mean_sq += (B.mean(0) ** 2).sum()
        return self.ops.to_host(sq), float(self.ops.to_host(mean_sq))


class NpyRowWriter:
    """A new (rows, cols) ``.npy`` file filled row block by row block with ``pwrite``: ``w[a:b] = block``.

    Not a memory map: the written pages stay in the page cache, out of the process's resident set, so
    writing d x k components costs no memory that grows with d. :meth:`close` returns the file as a
    read-only memory map (pages read on demand).
    """

    def __init__(self, path, shape: tuple, dtype=np.float32):
        from ..store.writer import npy_header

        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        header = npy_header(self.dtype, self.shape)
        self.offset = len(header)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        os.pwrite(self._fd, header, 0)
        os.ftruncate(self._fd, self.offset + int(np.prod(self.shape)) * self.dtype.itemsize)

    def __setitem__(self, rows: slice, value) -> None:
        start = rows.start or 0
        data = np.ascontiguousarray(value, dtype=self.dtype)
        view = memoryview(data).cast("B")
        pos = self.offset + start * self.shape[1] * self.dtype.itemsize
        while len(view):
            done = os.pwrite(self._fd, view, pos)
            view, pos = view[done:], pos + done

    def close(self) -> np.memmap:
        os.close(self._fd)
        return np.load(self.path, mmap_mode="r", allow_pickle=False)


def save_checkpoint(stem: Path, identity: str, array: np.ndarray, **state) -> None:
    """Atomically save ``array`` (.npy) and ``state`` (.json) for the data named by ``identity``."""
    stem = Path(stem)
    atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, array, allow_pickle=False))
    atomic_write(stem.with_suffix(".json"), lambda f: f.write(json.dumps({"identity": identity, **state}).encode()))


def load_checkpoint(stem: Path, identity: str) -> dict | None:
    """The saved state if it belongs to the same data, else None (a stale checkpoint is ignored)."""
    stem = Path(stem)
    try:
        state = json.loads(stem.with_suffix(".json").read_text())
        if state.get("identity") != identity:
            return None
        return {**state, "array": np.load(stem.with_suffix(".npy"), allow_pickle=False)}
    except (OSError, ValueError):
        return None
