"""Benchmark of the collect stage: DP step cost and logging overhead, side by side in one run.

Each mode runs in its own subprocess (so peak memory is its own) on the same model and the
same SST-2 batches:

  non-private       plain Adam step on the same trainable parameters
  dp-per-sample     Opacus per-sample gradients, clipped, noised
  dp-ghost          Opacus ghost clipping (per-example norms without per-example gradients, two backward passes)
  dp-bookkeeping    book-keeping clipping (spectral.dp.bookkeeping: one backward pass)
  dp-bookkeeping+store  dp-bookkeeping plus what collect does on the host each step: the privacy
                    ledger's epsilon, the steps-table record, writing the row, a commit every 50 steps

Beside the table, the accountant's per-step cost before and after caching (RDP), and PRV's.

Peak memory is the largest resident set size above the process's size just before the first
step (sampled every 2 ms), i.e. what the steps themselves allocate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from .memory import PeakRSS

MODES = ("non-private", "dp-per-sample", "dp-ghost", "dp-bookkeeping", "dp-bookkeeping+store")
CLIPPING = {"dp-per-sample": "per-sample", "dp-ghost": "ghost", "dp-bookkeeping": "bookkeeping"}


class NonPrivateSteps:
    """The reference each DP mode is measured against: Adam on the mean loss, no clipping, no noise.
    Steps like a :class:`~spectral.dp.engine.DPEngine` so the one step loop drives both."""

    def __init__(self, model, lr: float, batch_size: int, device):
        import torch

        self.model, self.batch_size, self.device = model.train(), batch_size, device
        self.opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self, chunks, lr: float):
        import torch

        from ..dp.engine import to_device

        for inputs, labels in chunks:
            inputs, labels = to_device(inputs, labels, self.device)
            loss = torch.nn.functional.cross_entropy(self.model(**inputs).logits, labels) * len(labels)
            (loss / self.batch_size).backward()
        self.opt.step()
        self.opt.zero_grad()


def measure(
    mode: str,
    params: str,
    batch_size: int,
    physical: int,
    warmup: int,
    steps: int,
    seed: int = 0,
    device="cpu",
    model_name: str = "all-MiniLM-L6-v2",
    data=None,
) -> dict:
    """Time ``steps`` steps of ``mode`` after ``warmup`` steps; returns seconds/step, peak MiB (host RSS,
    or the GPU's peak allocation on a GPU) and the padded tokens per step. Every mode runs the same
    batches (fixed-size, from the first 20,000 training examples) through collect's step loop."""
    import torch

    from ..collect.run import HostRows, step_record
    from ..device import resolve_device
    from ..dp.config import CollectConfig
    from ..dp.privacy import PrivacyLedger
    from ..dp.training import prepare
    from ..store import StoreWriter
    from ..store.format import shard_rows_for

    device = resolve_device(device)
    private = mode != "non-private"
    cfg = CollectConfig(
        model=model_name,
        data=data,
        train_size=20_000,
        objective="classifier",
        params=params,
        lr=1e-4,
        lr_schedule="constant",
        steps=warmup + steps,
        batch_size=batch_size,
        physical_batch_size=physical,
        sampling="shuffle",
        noise_multiplier=1.0,
        max_grad_norm=0.1,
        clipping=CLIPPING.get(mode.removesuffix("+store"), "ghost"),
        seed=seed,
        eval_every=0,
    ).validate()
    torch.manual_seed(seed)
    t = prepare(cfg, engine=private, device=device)
    engine = t.engine if private else NonPrivateSteps(t.model, cfg.lr, batch_size, device)
    n_body = sum(p.numel() for n, p in t.model.named_parameters() if "embeddings" not in n)

    writer = tmp = None
    if mode.endswith("+store"):  # the collect loop's host work, as collect/run.py does it
        tmp = tempfile.TemporaryDirectory(prefix="spectral-bench-")
        writer = StoreWriter.create(
            f"{tmp.name}/run",
            layout=t.layout,
            streams=["clipped"],
            dtype=cfg.dtype,
            shard_rows=shard_rows_for(t.d, cfg.dtype, cfg.shard_mb, cfg.checkpoint_every),
            meta={},
        )
        host_rows = HostRows(device, ["clipped"], t.d, slots=8)
        ledger = PrivacyLedger(bench_plan(batch_size, warmup + steps))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        for step, lr, out, took in t.steps(engine):
            if writer is not None:
                committing = (step + 1) % cfg.checkpoint_every == 0
                ledger.record_step(step)
                record = step_record(out, lr, ledger.epsilon(exact=committing), took)
                rows, ready = host_rows({"clipped": out.clipped})
                writer.append(step, rows, record, ready)
                if committing:
                    writer.commit(engine.state(), {"accountant": ledger.state()})
            if step + 1 == warmup:  # the clock starts after the warm-up steps
                sync()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
        if writer is not None:
            writer.commit()
            writer.close()  # the background writes belong to the measured time
        sync()
        seconds = (time.perf_counter() - t0) / steps
    if tmp is not None:
        tmp.cleanup()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else mem.peak - mem.base
    tokens = [sum(inputs["input_ids"].numel() for inputs, _ in t.chunks(step)) for step in range(warmup, cfg.steps)]
    return {
        "mode": mode,
        "params": params,
        "d": t.d,
        "sec_per_step": seconds,
        "peak_mib": peak / 2**20,
        "device": str(device),
        "tokens": float(np.mean(tokens)),
        "n_body": n_body,
    }


def bench_plan(batch_size: int, steps: int, accountant: str = "rdp"):
    from ..dp.privacy import PrivacyPlan

    return PrivacyPlan(
        sampling="poisson",
        accountant=accountant,
        n_train=67_349,
        batch_size=batch_size,
        steps=steps,
        noise_multiplier=0.9,
        max_grad_norm=0.1,
        delta=67_349**-1.1,
        target_epsilon=None,
    )


def accountant_costs(history_steps: int = 1000, repeats: int = 20) -> dict:
    """Milliseconds per step of epsilon after ``history_steps`` steps: the whole-history recompute
    the loop made before (Opacus' accountant on the history), the cached RDP sum it makes now, and PRV."""
    from ..dp.privacy import PrivacyLedger, compose_epsilon

    out = {}
    for accountant in ("rdp", "prv"):
        ledger = PrivacyLedger(bench_plan(1000, history_steps, accountant))
        for i in range(history_steps):
            ledger.record_step(i)
        t0 = time.perf_counter()
        for _ in range(repeats if accountant == "rdp" else 3):
            compose_epsilon(ledger.history(), ledger.plan.delta, accountant)
        out[f"{accountant}_recompute_ms"] = 1e3 * (time.perf_counter() - t0) / (repeats if accountant == "rdp" else 3)
        if accountant == "rdp":
            ledger.epsilon(exact=False)
            t0 = time.perf_counter()
            for _ in range(repeats):
                ledger.epsilon(exact=False)
            out["rdp_cached_ms"] = 1e3 * (time.perf_counter() - t0) / repeats
    return out


def run(params_list, batch_size, physical, warmup, steps, device="cpu", model=None, data=None) -> list[dict]:
    results = []
    chosen = (["--model", str(model)] if model else []) + (["--data", str(data)] if data else [])
    for params in params_list:
        for mode in MODES:
            cmd = [
                sys.executable,
                "-m",
                "spectral.bench",
                "collect",
                "--worker",
                mode,
                "--params",
                params,
                "--batch-size",
                str(batch_size),
                "--physical-batch-size",
                str(physical),
                "--warmup",
                str(warmup),
                "--steps",
                str(steps),
                "--device",
                str(device),
                *chosen,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark worker {mode} failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  measured {params:>13} {mode:<15} {results[-1]['sec_per_step']:.3f} s/step", file=sys.stderr)
    return results


def gemm_rate(device) -> float:
    """Measured float32 matrix-product rate (FLOP/s) on ``device``: the step's compute bound."""
    import torch

    a = torch.randn(4096, 4096, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ a
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    sync()
    return 5 * 2 * 4096**3 / (time.perf_counter() - t0)


def table(results: list[dict], device="cpu") -> str:
    """Markdown table with ratios against the non-private step of the same parameter set, and the
    non-private step against its compute bound (6 x body parameters x tokens / measured GEMM rate)."""
    rate = gemm_rate(device)
    lines = [
        f"device: {results[0]['device']}; float32 GEMM {rate / 1e12:.2f} TFLOP/s (measured)",
        "",
        "| params | d | mode | s/step | x non-private time | peak MiB | x non-private memory |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["params"]: r for r in results if r["mode"] == "non-private"}
    for r in results:
        b = base[r["params"]]
        lines.append(
            f"| {r['params']} | {r['d']:,} | {r['mode']} | {r['sec_per_step']:.3f} | "
            f"{r['sec_per_step'] / b['sec_per_step']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / max(b['peak_mib'], 1e-9):.2f} |"
        )
    for params in base:
        by = {r["mode"]: r for r in results if r["params"] == params}
        overhead = by["dp-bookkeeping+store"]["sec_per_step"] / by["dp-bookkeeping"]["sec_per_step"] - 1
        bk = by["dp-bookkeeping"]
        b = by["non-private"]
        bound = 6 * b["n_body"] * b["tokens"] / rate
        lines.append(
            f"\n{params}: non-private step {b['sec_per_step']:.4f} s = {b['sec_per_step'] / bound:.1f} x its "
            f"GEMM bound 6 x {b['n_body']:,} x {b['tokens']:.0f} tokens / rate = {bound:.4f} s"
        )
        lines.append(
            f"\n{params}: logging overhead (dp-bookkeeping+store vs dp-bookkeeping) = {100 * overhead:+.1f}% of step "
            f"time (target <= 3%); vs non-private: ghost {by['dp-ghost']['sec_per_step'] / b['sec_per_step']:.2f}x, "
            f"book-keeping {bk['sec_per_step'] / b['sec_per_step']:.2f}x time (target <= 1.4x on 2 CPU cores, 1.3x on a "
            f"GPU), memory {bk['peak_mib'] / max(b['peak_mib'], 1e-9):.2f}x (target <= 1.1x)"
        )
    acc = accountant_costs()
    lines.append(
        f"\naccountant per step after 1000 steps: RDP recomputed over the history (before) {acc['rdp_recompute_ms']:.1f} ms, "
        f"cached (now) {acc['rdp_cached_ms']:.2f} ms; PRV {acc['prv_recompute_ms']:.0f} ms (now at commits only)"
    )
    return "\n".join(lines)
