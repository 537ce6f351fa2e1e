"""Per-step cost of restricting DP updates to a top-r subspace, against unrestricted DP steps.

Unrestricted and restricted engines (same model, same batches) take turns step by step, so slow
drifts of the machine hit both alike. The subspace is a random orthonormal d × r basis: the cost
does not depend on which subspace it is.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..dp.config import CollectConfig
from ..dp.training import prepare
from ..retrain import Subspace
from ..retrain.run import restricted_engine


def run(
    ranks=(10, 100), modes=("signal", "signal+noise", "coordinates"), steps: int = 8, warmup: int = 2, **settings
) -> str:
    """``settings``: CollectConfig fields (model, data, batch_size, ...); the embedded default otherwise."""
    cfg = CollectConfig(steps=steps + warmup, eval_every=0, **settings).validate()
    base = prepare(cfg)
    variants, project_ms = {"unrestricted": base}, {}
    d = base.d
    for r in ranks:
        Q, _ = np.linalg.qr(np.random.default_rng(r).standard_normal((d, r)).astype(np.float32))
        sub = Subspace(Q)
        x = torch.randn(d)
        t0 = time.perf_counter()
        for _ in range(20):
            sub.project(x)
        project_ms[r] = (time.perf_counter() - t0) / 20 * 1e3
        for mode in modes:
            t = prepare(cfg, engine=False)
            t.engine = restricted_engine(t, sub, mode)
            variants[(r, mode)] = t
    seconds = {name: [] for name in variants}
    for step in range(steps + warmup):
        for name, t in variants.items():
            chunks = t.chunks(step)
            t0 = time.perf_counter()
            t.engine.step(chunks, cfg.learning_rate(step))
            if step >= warmup:
                seconds[name].append(time.perf_counter() - t0)
    ref = float(np.median(seconds["unrestricted"]))
    lines = [
        f"DP step on {cfg.model} ({cfg.params}, d={d:,}, batch {cfg.batch_size}, {cfg.clipping} clipping); "
        f"median of {steps} steps, variants taking turns on the same batches",
        "",
        "| variant | s / step | vs unrestricted | one projection V(Vᵀg) |",
        "|---|---|---|---|",
    ]
    for name, times in seconds.items():
        med = float(np.median(times))
        label, proj = (
            (name, "") if name == "unrestricted" else (f"rank {name[0]}, {name[1]}", f"{project_ms[name[0]]:.1f} ms")
        )
        lines.append(f"| {label} | {med:.3f} | {med / ref:.3f}x | {proj} |")
    return "\n".join(lines)
