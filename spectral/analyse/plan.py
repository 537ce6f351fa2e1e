"""What an analysis will cost, said before it is spent: passes, bytes read, peak memory, time.

The time is predicted from two quick probes of this machine: the cold read rate of the store's own
files through the block reader (the page cache of the probed columns is dropped first), and the
float64 GEMM rate at the sub-block shape the Gram pass uses. A pass takes the longer of its reads
and its arithmetic (the reader runs one block ahead of the arithmetic, so they overlap).

Peak memory of the exact Gram method, independent of d and of k·d:

    16·n² (H Hᵀ and the eigensolver's copy) + 48·n·k (eigenvectors, scores, certificate)
    + 2·n·w·s + 2·n·c·8 (read buffers of w columns of s bytes, float64 sub-block and product)

The components (d × k) are written block by block into a memory-mapped file, never held whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .matrix import TrajectoryMatrix

# arithmetic of one pass, in floating-point operations, for a trajectory (n, d) and k components
PASS_FLOPS = {
    "gram": lambda n, d, k: 2 * n * n * d,  # H Hᵀ (numpy uses syrk: half of it)
    "components": lambda n, d, k: 2 * n * d * k,  # Hᵀ U (float32)
    "hht": lambda n, d, k: 4 * n * d * (k + 10),  # H (Hᵀ Q), Q of k + oversample columns
}


def passes_of(method: str, n_iter: int = 4, holdout: bool = True) -> list[str]:
    """The passes a method makes over H, in order (the analyse stage's default outputs included). The
    held-out curve (``holdout``) is free for the exact methods (it comes from their Gram matrix); the
    streamed ones solve again on the fit steps and read the held-out steps twice (scores and norms),
    each pass reading the whole store."""
    if method == "gram":
        return ["gram", "components"]
    if method == "seedcode":
        return ["gram", "components", "components"]
    if method == "randomized":  # iterations, Y, two certificate products, components, norms
        own = ["hht"] * (n_iter + 3) + ["components", "components"]
    else:  # lanczos / orthiter: a typical count, not a bound
        own = ["hht"] * 60 + ["components", "components"]
    return own + (own + ["components", "components"] if holdout else [])


@dataclass
class Plan:
    """The predicted cost of analysing an (n, d) trajectory stored with ``itemsize`` bytes per value."""

    method: str
    n: int
    d: int
    k: int
    itemsize: int
    passes: list
    read_rate: float  # bytes per second
    cold: bool  # read_rate measured with the page cache dropped (else as the cache stood)
    flop_rate: float  # float64 FLOP per second
    block_cols: int
    compute_cols: int
    groups: int = 0  # analyse --groups: one n × n Gram matrix per group in the pass (8 n² bytes each)

    @property
    def bytes_read(self) -> int:
        return len(self.passes) * self.n * self.d * self.itemsize

    @property
    def peak_bytes(self) -> int:
        n, k = self.n, self.k
        buffers = 2 * n * self.block_cols * self.itemsize + 2 * n * self.compute_cols * 8
        return int(16 * n * n + 48 * n * k + buffers + 8 * n * n * self.groups)

    def pass_seconds(self, name: str) -> tuple[float, float]:
        """(read seconds, arithmetic seconds) of one pass; components run in float32 (about twice the rate)."""
        flops = PASS_FLOPS[name](self.n, self.d, self.k) / (2 if name == "components" else 1)
        return self.n * self.d * self.itemsize / self.read_rate, flops / self.flop_rate

    @property
    def seconds(self) -> float:
        return sum(max(self.pass_seconds(p)) for p in self.passes)

    def lines(self) -> list[str]:
        gib = 2**30
        out = [
            f"plan: {self.method} on H of {self.n:,} x {self.d:,} ({self.n * self.d * self.itemsize / gib:.1f} GiB), "
            f"k = {self.k}",
            f"  passes over H: {len(self.passes)} ({', '.join(self.passes)}); {self.bytes_read / gib:.1f} GiB read",
            f"  peak memory: {self.peak_bytes / gib:.2f} GiB = 16 n^2 + 48 n k + block buffers "
            f"(reads of {self.block_cols:,} columns, float64 sub-blocks of {self.compute_cols:,})"
            + (f" + 8 n^2 x {self.groups} groups" if self.groups else "")
            + "; independent of d",
            f"  probed: {'cold read' if self.cold else 'read (page cache as it stands)'} {self.read_rate / gib:.2f} GiB/s, "
            f"float64 GEMM {self.flop_rate / 1e9:.0f} GFLOP/s",
        ]
        for name in dict.fromkeys(self.passes):
            read, compute = self.pass_seconds(name)
            out.append(
                f"  {name} pass: read {read:,.0f} s, arithmetic {compute:,.0f} s ({'read' if read >= compute else 'compute'}-bound)"
            )
        out.append(f"  predicted: {self.seconds / 60:,.1f} min (an estimate from the probes, not a measurement)")
        return out


def probe_flops(n: int, cols: int, seconds: float = 0.5) -> float:
    """float64 FLOP/s of B Bᵀ for B (min(n, 2000), cols) on this machine, over about ``seconds``."""
    rows = min(n, 2000)
    B = np.random.default_rng(0).standard_normal((rows, max(cols, 256)))
    B @ B.T
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done == 0:
        B @ B.T
        done += 1
    return done * 2 * rows * rows * B.shape[1] / (time.perf_counter() - t0)


def probe_read(store, stream: str, block_cols: int, cold: bool, budget_bytes: int = 256 * 2**20) -> float:
    """Read rate (bytes/s) of the store's first column blocks, read as the passes read them; ``cold``
    drops the stream's page cache first (only where asked: it costs the run that follows its cache)."""
    if cold:
        store.drop_cache(stream)
    width = max(1, min(block_cols, budget_bytes // (store.n_steps * np.dtype(store.dtype_numpy).itemsize)))
    done, t0 = 0, time.perf_counter()
    for start in range(0, store.d, width):
        block = store.block(stream, 0, store.n_steps, start, min(start + width, store.d), dtype=store.dtype_numpy)
        done += block.nbytes
        if done >= budget_bytes or time.perf_counter() - t0 > 3:
            break
    return done / (time.perf_counter() - t0)


def plan(
    store, stream: str, method: str, k: int, max_memory: int, *, cold: bool, holdout: bool, n_iter: int = 4
) -> Plan:
    """Probe this machine and predict the cost of analysing ``stream`` of ``store`` (``cold``: probe the
    disk with the stream's page cache dropped; ``holdout``: with the held-out curve)."""
    itemsize = np.dtype(store.dtype_numpy).itemsize
    M = TrajectoryMatrix(store, stream, max_memory=max_memory)  # the passes' own view: its checks and block widths
    w, c = M.block_cols, M.compute_cols
    return Plan(
        method=method,
        n=store.n_steps,
        d=store.d,
        k=k,
        itemsize=itemsize,
        passes=passes_of(method, n_iter, holdout),
        read_rate=probe_read(store, stream, w, cold),
        cold=cold,
        flop_rate=probe_flops(store.n_steps, c),
        block_cols=w,
        compute_cols=c,
    )
