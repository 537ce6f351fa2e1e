"""--device: the torch code paths on the CPU against the numpy ones, clear errors for a missing GPU,
and (where CUDA exists, e.g. on a lent GPU machine) the GPU against the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spectral.store
from spectral.analyse import principal_components
from spectral.analyse.backends import TorchOps
from spectral.analyse.matrix import TrajectoryMatrix
from spectral.device import resolve_device
from spectral.errors import SpectralError
from spectral.store import StoreWriter, write_matrix

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _store(tmp_path, n=60, d=700, seed=0):
    rng = np.random.default_rng(seed)
    H = (rng.standard_normal((n, 8)) * np.geomspace(10, 0.1, 8)) @ rng.standard_normal((8, d))
    H = (H + 0.01 * rng.standard_normal((n, d))).astype(np.float32)
    write_matrix(tmp_path / "s", n, d, [(0, d, H)])
    return spectral.store.open(tmp_path / "s"), H.astype(np.float64)


def test_auto_and_cpu_resolve_here_and_a_missing_gpu_is_one_clear_error():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SpectralError, match="unknown device"):
        resolve_device("tpu:7x")
    if not torch.cuda.is_available():
        with pytest.raises(SpectralError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
@pytest.mark.parametrize("stage", ["collect", "analyse", "retrain", "toy"])
def test_cli_device_cuda_without_cuda_exits_2(stage, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"spectral.{stage}.__main__").main
    run = tmp_path / "run"
    if stage == "analyse":
        _store(tmp_path)
        run = tmp_path / "s"
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--device", "cuda", "--no-progress", *(["--scale", "quick"] if stage == "toy" else [])])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error:") and "CUDA is not available" in err and "Traceback" not in err


def test_torch_products_equal_the_numpy_ones(tmp_path):
    store, H = _store(tmp_path)
    rows = np.arange(0, 60, 2)
    for subset in (None, rows):
        ref = TrajectoryMatrix(store, rows=subset, max_memory=60 * 8 * 3 * 100)  # several column blocks
        dev = TrajectoryMatrix(store, rows=subset, max_memory=60 * 8 * 3 * 100, ops=TorchOps("cpu"))
        assert dev.block_cols < store.d
        Q = np.random.default_rng(1).standard_normal((ref.n, 5))
        V = np.random.default_rng(2).standard_normal((store.d, 4))
        np.testing.assert_allclose(dev.gram(), ref.gram(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(dev.hht(Q), ref.hht(Q), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(dev.matmat(V), ref.matmat(V), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(dev.rmatmat(Q), ref.rmatmat(Q), rtol=1e-12, atol=1e-9)
        for a, b in zip(dev.norms(), ref.norms()):
            np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("method", ["gram", "randomized", "lanczos"])
def test_torch_path_eigenpairs_match_dense_numpy(tmp_path, method):
    store, H = _store(tmp_path)
    k = 6
    spec = principal_components(TrajectoryMatrix(store, ops=TorchOps("cpu")), k, method=method, n_iter=8)
    exact = np.linalg.eigvalsh(H.T @ H)[::-1][:k]
    np.testing.assert_allclose(spec.eigenvalues, exact, rtol=1e-8 if method != "randomized" else 1e-6)
    assert spec.residuals.max() < 1e-5


def test_device_cpu_is_the_numpy_path_bit_for_bit(tmp_path):
    store, _ = _store(tmp_path)
    a = principal_components(store, 5, method="gram")
    b = principal_components(store, 5, method="gram", device="cpu")
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(np.asarray(a.components), np.asarray(b.components))


def test_writer_calls_ready_before_it_reads_a_row(tmp_path):
    """The hook that lets collect hand over rows whose device-to-host copy is still in flight."""
    d = 10
    writer = StoreWriter.create(
        tmp_path / "w",
        layout=[{"name": "x", "shape": [d], "offset": 0, "numel": d}],
        streams=["clipped"],
        dtype="float32",
        shard_rows=4,
        meta={},
    )
    buffers = [np.zeros(d, dtype=np.float32) for _ in range(3)]
    for step in range(3):
        # the row is filled only when the writer asks for it, as an asynchronous copy would be
        writer.append(
            step, {"clipped": buffers[step]}, {"loss": 0.0}, ready=lambda b=buffers[step], v=step + 1: b.fill(v)
        )
    writer.commit()
    writer.close(status="complete")
    rows = spectral.store.open(tmp_path / "w").rows("clipped")
    np.testing.assert_array_equal(rows[:, 0], [1, 2, 3])


# ---------------------------------------------------------------------- on a GPU (skipped here)
@cuda
def test_gpu_analysis_equals_the_cpu(tmp_path):
    store, _ = _store(tmp_path)
    a = principal_components(store, 6, method="gram")
    b = principal_components(store, 6, method="gram", device="cuda")
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-10)


@cuda
def test_gpu_collect_stores_what_the_cpu_stores(tiny_model, tiny_data, tmp_path):
    """Same batches and noise seed: the clipped rows agree to float32 rounding (dropout is off)."""
    from spectral.collect import CollectConfig, collect

    cfg = CollectConfig(
        model=str(tiny_model),
        data=str(tiny_data),
        objective="classifier",
        steps=4,
        batch_size=16,
        physical_batch_size=8,
        noise_multiplier=1.0,
        eval_every=2,
        streams=["clipped", "private"],
    )
    collect(cfg, tmp_path / "cpu", progress=False, device="cpu")
    collect(cfg, tmp_path / "gpu", progress=False, device="cuda")
    cpu, gpu = spectral.store.open(tmp_path / "cpu"), spectral.store.open(tmp_path / "gpu")
    np.testing.assert_allclose(gpu.rows("clipped"), cpu.rows("clipped"), rtol=1e-3, atol=1e-6)
    # the noise comes from the GPU's generator: another stream of draws with the same std
    noise = (gpu.rows("private") - gpu.rows("clipped")) * 16
    assert noise.std() == pytest.approx(1.0 * cfg.max_grad_norm, rel=0.1)
