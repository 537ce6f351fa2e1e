"""``python -m spectral.bench analyse --cold --n 4000 --d 250000 500000``: the analyse stage at the
paper's number of steps, read from disk with a cold page cache.

For each d, on a synthetic store written as collect writes it (shards of 50 rows, column tiles):

  sequential   one cold read of every shard file, front to back in 64 MiB reads: the disk's rate
  bound        per pass, max(bytes / sequential rate, the pass's arithmetic timed in memory on one
               block and scaled to d); summed over the passes
  ours         ``spectral.analyse.analyse`` (k = 1000, held-out curves, every default output) in its
               own process, the page cache dropped before every pass (posix_fadvise DONTNEED);
               time, passes, bytes, the reader's rate while reading, time waited on reads, peak RSS
  legacy       with ``--legacy REF``: the code at git REF on a row-major (version-1) copy of the same
               store: one cold read-only pass (its read rate) and one Gram pass, timed; its full run
               is extrapolated from them (it makes six passes), and said so

The stores are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARD_ROWS = 50  # collect's default commit interval caps its shards at 50 rows


def build(root: Path, n: int, d: int, seed: int = 0, rank: int = 64, block: int = 16384) -> Path:
    """H = A Wᵀ (rank ``rank``, singular values j^-1) + a small full-rank Gaussian part."""
    from ..store import write_matrix

    rng = np.random.default_rng(seed)
    rank = min(rank, n)
    A = np.linalg.qr(rng.standard_normal((n, rank)))[0] * np.arange(1, rank + 1) ** -1.0

    def blocks():
        for start in range(0, d, block):
            stop = min(start + block, d)
            g = np.random.default_rng([seed, start])
            W = g.standard_normal((stop - start, rank), dtype=np.float32) / np.sqrt(d)
            noise = g.standard_normal((n, stop - start), dtype=np.float32) * np.float32(1e-3 / np.sqrt(d))
            yield start, stop, (A.astype(np.float32) @ W.T + noise)

    meta = {"synthetic": {"n": n, "d": d, "rank": rank, "seed": seed}}
    return write_matrix(root, n, d, blocks(), meta=meta, shard_rows=SHARD_ROWS)


def write_row_major_copy(store, root: Path) -> Path:
    """The same values as a version-1 store (row-major 2-D shards), for code that predates tiles."""
    from ..store.format import MANIFEST, shard_path, write_json

    manifest = json.loads(json.dumps(store.manifest))
    manifest["format_version"] = 1
    manifest.pop("tile_cols", None)
    for sh in manifest["shards"]:
        rows = store.rows("clipped", sh["start"], sh["stop"])
        path = root / shard_path("clipped", sh["start"], sh["stop"])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rows)
    write_json(root / MANIFEST, manifest)
    return root


def drop(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_rate(root: Path) -> float:
    """Bytes/s of one cold front-to-back read of every shard file."""
    files = sorted((root / "streams").rglob("*.npy"))
    drop(files)
    size, t0 = 0, time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(2**26):
                size += len(chunk)
    return size / (time.perf_counter() - t0)


def read_only_pass(store) -> float:
    """Bytes/s of one cold pass of our block reader with no arithmetic (the reads the passes make)."""
    from ..analyse.matrix import TrajectoryMatrix

    M = TrajectoryMatrix(store, before_pass=store.drop_cache)
    raw = M._raw_blocks(M._spans(0))
    t0 = time.perf_counter()
    for _ in raw:
        pass
    return M.io["bytes"] / (time.perf_counter() - t0)


def arithmetic_seconds(n: int, d: int, k: int, cols: int) -> dict:
    """The passes' arithmetic timed in memory on one block of ``cols`` columns and scaled to d."""
    rng = np.random.default_rng(0)
    B = rng.standard_normal((n, cols))
    U = rng.standard_normal((n, k)).astype(np.float32)
    B32 = B.astype(np.float32)
    B @ B.T
    t0 = time.perf_counter()
    B @ B.T
    gram = (time.perf_counter() - t0) * d / cols
    t0 = time.perf_counter()
    np.ascontiguousarray(B32.T) @ U
    components = (time.perf_counter() - t0) * d / cols
    return {"gram": gram, "components": components}


def peak_rss() -> int:
    """This process's peak resident set (VmHWM), in bytes. Not ``ru_maxrss``: Linux carries the parent's
    high-water mark across fork and exec into it, so a worker started by a parent that wrote the store
    would report the store's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(root: str, k: int) -> None:
    """Run the analyse stage cold on ``root`` and print its measurements as one JSON line."""
    from ..analyse import matrix
    from ..analyse.run import AnalyseConfig, analyse
    from ..store import open as open_store

    store = open_store(root)
    init = matrix.TrajectoryMatrix.__init__

    def cold_init(self, *args, **kwargs):  # every pass starts with the page cache dropped
        init(self, *args, **kwargs)
        self.before_pass = lambda: store.drop_cache()

    matrix.TrajectoryMatrix.__init__ = cold_init
    t0 = time.perf_counter()
    spec = analyse(root, AnalyseConfig(k=k), progress=False, device="cpu")
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    print(json.dumps({"seconds": seconds, "passes": spec.passes, "io": spec.info["io"], "peak_bytes": peak}))


LEGACY = """
import json, os, sys, time
from spectral.store import open as open_store
from spectral.analyse.matrix import TrajectoryMatrix
root = sys.argv[1]
store = open_store(root)
files = [a.filename for _, _, a in store.shards("clipped")]
def drop():
    for p in files:
        fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
M = TrajectoryMatrix(store)
drop(); t0 = time.perf_counter()
for _ in M.blocks("read"):
    pass
read = time.perf_counter() - t0
drop(); t0 = time.perf_counter()
M.gram()
gram = time.perf_counter() - t0
print(json.dumps({"read_seconds": read, "gram_seconds": gram, "block_cols": int(M.block_cols)}))
"""


def legacy_checkout(ref: str, where: Path) -> Path:
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], check=True, capture_output=True)
    return where


def run(n: int, ds, k: int, workdir: Path, legacy: str | None = None, keep: bool = False) -> str:
    from ..analyse.matrix import block_widths
    from ..store import open as open_store

    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()  # the legacy code runs from its own checkout
    lines = [
        f"analyse at the paper's step count, cold page cache: n = {n:,}, k = {k}, float32, shards of {SHARD_ROWS} rows",
        "",
    ]
    rows = []
    for d in ds:
        root = workdir / f"store-d{d}"
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        build(root, n, d)
        built = time.perf_counter() - t0
        store = open_store(root)
        seq = sequential_rate(root)
        store.drop_cache()
        reader_rate = read_only_pass(store)
        size = n * d * 4
        w, c = block_widths(
            n, n, d, 4, store.tile_cols, max(1, int(__import__("psutil").virtual_memory().available // 4))
        )
        arith = arithmetic_seconds(n, d, k, c)
        bound = sum(max(size / seq, arith[p]) for p in ("gram", "components"))
        proc = subprocess.run(
            [sys.executable, "-m", "spectral.bench", "analyse", "--cold", "--worker", str(root), "--k", str(k)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        ours = json.loads(proc.stdout.strip().splitlines()[-1])
        io = ours["io"]
        row = {
            "d": d,
            "gib": size / 2**30,
            "build_s": built,
            "sequential": seq,
            "bound": bound,
            "arith": arith,
            "ours": ours,
            "read_rate": io["bytes"] / io["read_seconds"],
            "reader_rate": reader_rate,
        }
        if legacy:
            v1 = workdir / f"store-d{d}-v1"
            if v1.exists():
                shutil.rmtree(v1)
            write_row_major_copy(store, v1)
            src = legacy_checkout(legacy, workdir / "legacy-src")
            out = subprocess.run(
                [sys.executable, "-c", LEGACY, str(v1)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(src)},
                cwd=str(src),
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            row["legacy"] = json.loads(out.stdout.strip().splitlines()[-1])
            if not keep:
                shutil.rmtree(v1)
        rows.append(row)
        if not keep:
            store.close()
            shutil.rmtree(root)
    lines += [
        "| d | store | sequential read | our reader alone (/ sequential) | ours: time | bound | ratio | passes | "
        "reads during the passes | waited on reads | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, io = r["ours"], r["ours"]["io"]
        lines.append(
            f"| {r['d']:,} | {r['gib']:.2f} GiB | {r['sequential'] / 2**30:.2f} GiB/s | "
            f"{r['reader_rate'] / 2**30:.2f} GiB/s ({r['reader_rate'] / r['sequential']:.0%}) | {o['seconds']:.1f} s | "
            f"{r['bound']:.1f} s | {o['seconds'] / r['bound']:.2f} | {o['passes']} | "
            f"{r['read_rate'] / 2**30:.2f} GiB/s ({r['read_rate'] / r['sequential']:.0%}) | {io['wait_seconds']:.1f} s | "
            f"{o['peak_bytes'] / 2**30:.2f} GiB |"
        )
    lines.append("")
    for r in rows:
        o, io, a = r["ours"], r["ours"]["io"], r["arith"]
        lines.append(
            f"d = {r['d']:,}: passes {io['pass_seconds']:.1f} s of {o['seconds']:.1f} s (the rest: eigensolver, held-out "
            f"and certificates on n x n, outputs); arithmetic in memory: Gram {a['gram']:.1f} s, components "
            f"{a['components']:.1f} s; reads {io['read_seconds']:.1f} s for {io['bytes'] / 2**30:.1f} GiB; "
            f"blocks of {io['block_cols']:,} columns, buffers {io['buffer_bytes'] / 2**20:.0f} MiB"
        )
        if "legacy" in r:
            g = r["legacy"]
            rate = r["gib"] * 2**30 / g["read_seconds"]
            lines.append(
                f"  legacy ({legacy}) on the row-major copy: read-only pass {g['read_seconds']:.1f} s "
                f"({rate / 2**30:.2f} GiB/s = {rate / r['sequential']:.0%} of sequential, {g['block_cols']:,}-column "
                f"blocks = {g['block_cols'] * 4 / 1024:.1f} KiB runs); Gram pass {g['gram_seconds']:.1f} s; its default "
                f"analyse makes 6 passes: at least {g['gram_seconds'] + 5 * g['read_seconds']:.0f} s extrapolated "
                f"(Gram + 5 read-bound passes; not run), and holds the held-out components (d x k float32 = {r['d'] * k * 4 / 2**30:.1f} GiB) in RAM"
            )
    return "\n".join(lines)
