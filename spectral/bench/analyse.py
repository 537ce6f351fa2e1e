"""Benchmark of the analyse stage on a synthetic on-disk trajectory with a power-law spectrum.

Every method runs in its own subprocess (so peak RSS is its own) on the same store:

  ours (auto)          spectral.analyse.principal_components(method="auto")
  ours (orthiter)      the seed code's orthogonal iteration, 10 iterations (reference)
  sklearn randomized   sklearn.utils.extmath.randomized_svd(H, k, n_iter=4) on the memmap
  torch svd_lowrank    torch.svd_lowrank(H, q=k+10, niter=4) on the memmap
  scipy eigsh          scipy.sparse.linalg.eigsh on the operator v -> H Hᵀ v over the memmap

Accuracy is against an exact reference (float64 Gram matrix of the stored values, dense
``eigh``). The machine's sequential read bandwidth and float64 GEMM rate give a lower bound
max(read time x passes, Gram FLOPs / GEMM rate) for our method's time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..layout import RunDir
from .memory import PeakRSS

METHODS = ("ours", "orthiter", "sklearn", "torch", "eigsh")


def build(root: Path, n: int, d: int, slope: float, seed: int = 0, block: int = 50_000) -> Path:
    """H = U diag(j^-slope) Wᵀ with W Gaussian / sqrt(d), written column block by column block."""
    from ..store import write_matrix

    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = U * np.arange(1, n + 1, dtype=float) ** -slope

    def blocks():
        for start in range(0, d, block):
            stop = min(start + block, d)
            W = np.random.default_rng([seed, start]).standard_normal((stop - start, n)) / np.sqrt(d)
            yield start, stop, A @ W.T

    return write_matrix(root, n, d, blocks(), meta={"synthetic": {"n": n, "d": d, "slope": slope, "seed": seed}})


def _shard(root: Path) -> np.ndarray:
    """H as a row-major (n, d) memmap for the library methods (the store's shards are tiled):
    written once beside the store from its column blocks."""
    from ..store import open as open_store

    path = root.parent / "rowmajor.npy"
    if not path.exists():
        store = open_store(root)
        out = np.lib.format.open_memmap(
            path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(store.n_steps, store.d)
        )
        for start, block in store.iter_column_blocks("clipped", 65536):
            out[:, start : start + block.shape[1]] = block
        out.flush()
        del out
        path.with_suffix(".tmp.npy").rename(path)
    return np.load(path, mmap_mode="r")


def run_method(method: str, root: Path, k: int, out: Path, device="cpu") -> dict:
    """Top-k eigenvalues of HᵀH and components (d, k) into ``out``; returns timing and passes."""
    from ..store import open as open_store

    store = open_store(root)
    t0 = time.perf_counter()
    passes = None
    if method in ("ours", "orthiter", "ours-device"):
        from ..analyse import principal_components

        spec = principal_components(
            store,
            k,
            method="orthiter" if method == "orthiter" else "auto",
            components_out=out / "V.npy",
            device=device if method == "ours-device" else None,
        )
        lam, passes, used = spec.eigenvalues, spec.passes, spec.method
    else:
        H = _shard(root)
        used = method
        if method == "sklearn":
            from sklearn.utils.extmath import randomized_svd

            _, s, Vt = randomized_svd(H, k, n_iter=4, random_state=0)
            lam, V, passes = s**2, Vt.T, 2 * 4 + 3
        elif method == "torch":
            import torch

            _, s, V = torch.svd_lowrank(torch.from_numpy(np.asarray(H)), q=k + 10, niter=4)
            lam, V, passes = (s[:k] ** 2).numpy(), V[:, :k].numpy(), 2 * 4 + 3
        elif method == "eigsh":
            import scipy.sparse.linalg as sla

            count = [0]

            def matvec(v):
                count[0] += 1
                return H @ (H.T @ v)

            op = sla.LinearOperator((H.shape[0],) * 2, matvec=matvec, dtype=np.float32)
            lam, U = sla.eigsh(op, k=k, which="LA")
            order = np.argsort(lam)[::-1]
            lam, U = lam[order], U[:, order]
            V = (H.T @ U) / np.sqrt(lam)
            passes = count[0] + 1
        np.save(out / "V.npy", np.asarray(V, dtype=np.float32))
    seconds = time.perf_counter() - t0
    np.save(out / "lam.npy", np.asarray(lam, dtype=np.float64))
    return {"method": method, "used": used, "seconds": seconds, "passes": passes}


def reference(root: Path, k: int, out: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k (λ, V memmap) from an independent float64 Gram loop; returns its pass time too."""
    H = _shard(root)
    n, d = H.shape
    G = np.zeros((n, n))
    t0 = time.perf_counter()
    for start in range(0, d, 20_000):
        B = np.asarray(H[:, start : start + 20_000], dtype=np.float64)
        G += B @ B.T
    read_seconds = time.perf_counter() - t0
    w, U = np.linalg.eigh(G)
    lam, U = w[::-1][:k], U[:, ::-1][:, :k]
    V = np.lib.format.open_memmap(out / "V_ref.npy", mode="w+", dtype=np.float64, shape=(d, k))
    for start in range(0, d, 20_000):
        V[start : start + 20_000] = np.asarray(H[:, start : start + 20_000], dtype=np.float64).T @ U / np.sqrt(lam)
    return lam, V, read_seconds


def accuracy(lam, V, lam_ref, V_ref) -> tuple[float, float]:
    """(max relative eigenvalue error, largest principal angle in degrees), V's read in blocks."""
    k = len(lam_ref)
    rel = float(np.max(np.abs(np.asarray(lam[:k]) - lam_ref) / lam_ref))
    C = np.zeros((k, k))
    VtV = np.zeros((k, k))
    for start in range(0, V_ref.shape[0], 100_000):
        a = np.asarray(V_ref[start : start + 100_000], dtype=np.float64)
        b = np.asarray(V[start : start + 100_000, :k], dtype=np.float64)
        C += a.T @ b
        VtV += b.T @ b
    # orthonormalise V's columns through their Gram matrix before measuring the angle
    L = np.linalg.cholesky(VtV + 1e-300 * np.eye(k))
    s = np.linalg.svd(np.linalg.solve(L, C.T).T, compute_uv=False)
    return rel, float(np.degrees(np.arccos(np.clip(s.min(), -1, 1))))


def machine_rates(root: Path) -> dict:
    """Sequential read bandwidth of the shard file (as the OS serves it now) and float64 GEMM rate."""
    path = next((root / "streams" / "clipped").iterdir())
    t0, size = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(2**26):
            size += len(chunk)
    read_bw = size / (time.perf_counter() - t0)
    a = np.random.default_rng(0).standard_normal((1000, 20_000))
    a @ a.T
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a.T
    gemm = 3 * 2 * 1000 * 1000 * 20_000 / (time.perf_counter() - t0)
    return {"read_bytes_per_s": read_bw, "gemm_flops_per_s": gemm, "bytes": size}


def device_rates(device) -> dict:
    """The GPU's float64 GEMM rate and pinned host-to-device bandwidth (torch, measured now)."""
    import torch

    a = torch.randn(4000, 4000, dtype=torch.float64, device=device)
    host = torch.empty(2**28, dtype=torch.uint8, pin_memory=True)
    a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    torch.cuda.synchronize()
    gemm = 5 * 2 * 4000**3 / (time.perf_counter() - t0)
    host.to(device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        host.to(device)
    torch.cuda.synchronize()
    return {"gemm_flops_per_s": gemm, "h2d_bytes_per_s": 5 * host.numel() / (time.perf_counter() - t0)}


def worker(method: str, root: str, k: int, out: str, device="cpu") -> None:
    """Run one method while sampling RSS; print a JSON line."""
    with PeakRSS(interval=0.005) as mem:
        result = run_method(method, Path(root), k, Path(out), device)
    print(json.dumps({**result, "peak_mib": mem.peak / 2**20}))


def run(n: int, d: int, ks, slope: float, workdir: Path, methods, timeout: int, device="cpu") -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "store"
    if not RunDir(root).has_store():
        print(f"building a synthetic {n} x {d} trajectory ({n * d * 4 / 2**30:.2f} GiB) in {root}", file=sys.stderr)
        build(root, n, d, slope)
    rates = machine_rates(root)
    lines = [
        f"synthetic trajectory n={n}, d={d:,} ({rates['bytes'] / 2**30:.2f} GiB float32), singular values j^-{slope}",
        f"machine: sequential read {rates['read_bytes_per_s'] / 2**30:.2f} GiB/s (as served now), "
        f"float64 GEMM {rates['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s",
    ]
    gpu = None
    if device != "cpu":
        gpu = device_rates(device)
        methods = [*methods, "ours-device"]
        lines.append(
            f"{device}: float64 GEMM {gpu['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s, pinned host-to-device "
            f"{gpu['h2d_bytes_per_s'] / 2**30:.1f} GiB/s"
        )
    lines.append("")
    for k in ks:
        out = workdir / f"k{k}"
        out.mkdir(exist_ok=True)
        lam_ref, V_ref, _ = reference(root, k, out)
        lines += [
            f"k = {k}",
            "| method | solver used | seconds | passes | peak RSS MiB | max rel eig error | largest angle (deg) |",
            "|---|---|---|---|---|---|---|",
        ]
        results = {}
        for method in methods:
            cmd = [
                sys.executable,
                "-m",
                "spectral.bench",
                "analyse",
                "--worker",
                method,
                "--dir",
                str(workdir),
                "--k",
                str(k),
                "--device",
                device,
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                lines.append(f"| {method} | | > {timeout} (stopped) | | | | |")
                continue
            if proc.returncode != 0:
                lines.append(f"| {method} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | | | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rel, angle = accuracy(np.load(out / "lam.npy"), np.load(out / "V.npy", mmap_mode="r"), lam_ref, V_ref)
            results[method] = r
            lines.append(
                f"| {method} | {r['used']} | {r['seconds']:.2f} | {r['passes']} | {r['peak_mib']:.0f} | "
                f"{rel:.1e} | {angle:.2e} |"
            )
        if "ours" in results:
            ours = results["ours"]
            bound = max(
                rates["bytes"] / rates["read_bytes_per_s"] * ours["passes"], 2 * n * n * d / rates["gemm_flops_per_s"]
            )
            lines.append(
                f"\nours: {ours['seconds']:.2f} s = {ours['seconds'] / bound:.2f} x the lower bound "
                f"max(read x passes, Gram FLOPs / GEMM rate) = {bound:.2f} s"
            )
            for other in ("orthiter", "sklearn"):
                if other in results:
                    lines.append(f"ours vs {other}: {results[other]['seconds'] / ours['seconds']:.1f}x faster")
        if "ours-device" in results and gpu is not None:
            r = results["ours-device"]
            bound = max(
                rates["bytes"] / rates["read_bytes_per_s"] * r["passes"],
                rates["bytes"] / gpu["h2d_bytes_per_s"] * r["passes"],  # float32 blocks, widened there
                2 * n * n * d / gpu["gemm_flops_per_s"],
            )
            lines.append(
                f"ours on {device}: {r['seconds']:.2f} s = {r['seconds'] / bound:.2f} x its lower bound "
                f"max(disk read x passes, host-to-device x passes, Gram FLOPs / float64 GEMM rate) = "
                f"{bound:.2f} s; {results['ours']['seconds'] / r['seconds']:.1f}x the CPU path"
                if "ours" in results
                else ""
            )
        lines.append("")
    return "\n".join(lines)
