"""Data-parallel collection (``torchrun --nproc-per-node N``) against one process, side by side.

Both runs collect the same steps of the embedded default or ``model`` (same seed, so the same batches and
noise) into temporary stores. Printed: seconds per step (median after the first step) of each, their
ratio, and how far the N-rank clipped rows are from the one-process rows. The machine's cores are
split evenly: one process gets them all, each of N ranks gets 1/N of them, so the ratio is what
data parallelism buys on this machine (on CPUs nothing: the same cores do the same arithmetic plus
an all-reduce; on N GPUs each rank brings its own device).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import store


def collect_args(run_dir: Path, steps: int, batch_size: int, physical: int, device: str, chosen=()) -> list[str]:
    return [
        "-m",
        "spectral.collect",
        str(run_dir),
        f"--steps={steps}",
        f"--batch-size={batch_size}",
        f"--physical-batch-size={physical}",
        "--max-length=64",
        "--eval-every=0",
        f"--checkpoint-every={steps}",
        f"--device={device}",
        "--no-progress",
        *chosen,
    ]


def launch(run_dir: Path, nproc: int, args: list[str]) -> store.Store:
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{nproc}-process collect failed:\n{proc.stderr[-3000:]}")
    return store.open(run_dir)


def run(
    nproc: int = 2,
    steps: int = 8,
    batch_size: int = 128,
    physical: int = 64,
    device: str = "cpu",
    model=None,
    data=None,
) -> str:
    chosen = (["--model", str(model)] if model else []) + (["--data", str(data)] if data else [])
    with tempfile.TemporaryDirectory(prefix="spectral-bench-parallel-") as tmp:
        one, many = (
            launch(Path(tmp) / name, procs, collect_args(Path(tmp) / name, steps, batch_size, physical, device, chosen))
            for name, procs in (("one", 1), ("many", nproc))
        )
        a, b = one.rows("clipped"), many.rows("clipped")
        error = float((np.abs(a - b).max(axis=1) / np.linalg.norm(a, axis=1)).max())
        t1, tn = (float(s.steps.seconds.iloc[1:].median()) for s in (one, many))
        name = one.manifest["config"]["model"]
    return "\n".join(
        [
            f"collect, {name}, batch {batch_size} (chunks of {physical}), {steps} steps, device {device}, "
            f"{os.cpu_count()} cores",
            "",
            "| processes | s/step | x one process |",
            "|---|---|---|",
            f"| 1 | {t1:.3f} | 1.00 |",
            f"| {nproc} | {tn:.3f} | {tn / t1:.2f} |",
            "",
            f"clipped rows, {nproc} ranks vs 1 process: max |difference| / row norm = {error:.1e}. Without dropout "
            "they agree to float32 rounding (tests/test_collect_distributed.py: < 1e-5); a model that trains with "
            "dropout (the embedded one: 0.1) draws other masks on each rank, so its rows differ by more.",
        ]
    )
