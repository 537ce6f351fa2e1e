"""The default ``--threads`` against all the machine's cores, on a quiet machine and beside a competing process.

Four collects of the same steps (embedded default or ``model``, same seed), side by side in one run: the
default threads (the free cores, :func:`spectral.cli.free_cores`) and ``--threads <all cores>``, each
alone and while another single-threaded process keeps one core busy (started first, as a user's other job
would be). OpenMP threads spin-wait for a core another process holds, so more threads than free cores can
be several times slower than fewer. Printed: threads used, seconds per step (median after the first), and
each against the default on the quiet machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import store
from .parallel import collect_args

# one busy core: a pure-Python loop (no BLAS threads of its own)
COMPETITOR = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def measure(run_dir: Path, args: list[str], threads: int | None) -> tuple[float, int]:
    """(median seconds per step after the first, threads the run recorded)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    chosen = [f"--threads={threads}"] if threads else []
    proc = subprocess.run([sys.executable, *args, *chosen], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"collect failed:\n{proc.stderr[-3000:]}")
    s = store.open(run_dir)
    return float(s.steps.seconds.iloc[1:].median()), int(s.manifest.get("threads", 0))


def run(steps: int = 6, batch_size: int = 64, physical: int = 32, model=None, data=None) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chosen = (["--model", str(model)] if model else []) + (["--data", str(data)] if data else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="spectral-bench-threads-") as tmp:
        for competing in (False, True):
            rival = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competing else None
            try:
                if rival:
                    time.sleep(1.0)  # busy before the collect samples the cores
                for label, threads in (("default", None), (f"--threads {cores}", cores)):
                    run_dir = Path(tmp) / f"{label.replace(' ', '')}-{competing}"
                    args = collect_args(run_dir, steps, batch_size, physical, "cpu", chosen)
                    seconds, used = measure(run_dir, args, threads)
                    rows.append((competing, label, used, seconds))
            finally:
                if rival:
                    rival.kill()
                    rival.wait()
    base = rows[0][3]
    lines = [
        f"collect, batch {batch_size} (chunks of {physical}), {steps} steps, {cores} cores; each setting alone and "
        "beside one busy single-threaded process",
        "",
        "| other process | threads setting | threads used | s/step | x default, quiet |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {'one busy core' if c else 'none'} | {label} | {used} | {s:.2f} | {s / base:.2f} |"
        for c, label, used, s in rows
    ]
    return "\n".join(lines)
