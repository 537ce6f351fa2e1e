"""The two instruments' cost, measured side by side: ``analyse`` with and without ``--groups`` and
``spectral.compare`` against one plain Gram pass, on synthetic stores with the embedded model's q/v
layout (6 blocks x query/value weight and bias; numel scaled by ``--shrink`` so the store fits the disk).

    python benchmarks/instruments.py --n 1000 --shrink 8        # writes runs/bench-instruments/

Prints seconds and ratios; every timing is a full run of the stage function (warm page cache: each store
is read once before the first timing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import spectral as sp
import spectral.store as store_mod
from spectral.analyse.matrix import TrajectoryMatrix


def qv_layout(shrink: int) -> list[dict]:
    """all-MiniLM-L6-v2's attention q/v tensors (384 x 384 weights, 384 biases), numel divided by ``shrink``."""
    layout, offset = [], 0
    for layer in range(6):
        for proj in ("query", "value"):
            for kind, numel in (("weight", 384 * 384), ("bias", 384)):
                size = max(1, numel // shrink)
                name = f"encoder.layer.{layer}.attention.self.{proj}.{kind}"
                layout.append({"name": name, "shape": [size], "offset": offset, "numel": size})
                offset += size
    return layout


def write(root: Path, n: int, layout: list, seed: int) -> None:
    if (root / "manifest.json").is_file():
        return
    d = sum(p["numel"] for p in layout)
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((20, d)).astype(np.float32)
    w = store_mod.StoreWriter.create(root, layout=layout, streams=["clipped"], dtype="float32", shard_rows=50, meta={})
    for t in range(n):
        row = (rng.standard_normal(20) * np.arange(1, 21) ** -1.0) @ basis + 0.05 * rng.standard_normal(d)
        w.append(t, {"clipped": row.astype(np.float32)}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--shrink", type=int, default=8)
    p.add_argument("--dir", type=Path, default=Path("runs/bench-instruments"))
    args = p.parse_args(argv)
    layout = qv_layout(args.shrink)
    a, b = args.dir / "a", args.dir / "b"
    write(a, args.n, layout, 0)
    write(b, args.n, layout, 1)
    for root in (a, b):  # warm the page cache: every timing below reads from memory
        TrajectoryMatrix(store_mod.open(root)).norms()
    k = min(100, args.n)
    rows = {}
    for groups in ("none", "layer", "param"):
        out = args.dir / f"analysis-{groups}"
        rows[f"analyse --groups {groups}"] = timed(
            lambda g=groups, o=out: sp.analyse(a, k=k, holdout="none", groups=g, out=o, progress=False, device="cpu")
        )
    rows["one Gram pass over A"] = timed(lambda: TrajectoryMatrix(store_mod.open(a)).gram())
    rows[f"compare A B (k 10 {k})"] = timed(lambda: sp.compare(a, b, ks=(10, k), progress=False, device="cpu"))
    d = sum(p["numel"] for p in layout)
    print(f"n = {args.n}, d = {d:,} ({len(layout)} tensors, 6 layers), k = {k}")
    base, gram = rows["analyse --groups none"], rows["one Gram pass over A"]
    for name, seconds in rows.items():
        ref = (
            f"{seconds / base:.2f}x analyse without groups"
            if name.startswith("analyse")
            else f"{seconds / gram:.2f}x one Gram pass"
        )
        print(f"  {name:28s} {seconds:7.2f} s   {ref}")


if __name__ == "__main__":
    main()
