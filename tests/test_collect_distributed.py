"""Data-parallel collection under torchrun (gloo, 2 CPU processes) against a single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

import spectral.store as store

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def settings(model, data, steps, **extra) -> list[str]:
    given = {
        "model": model,
        "data": data,
        "objective": "classifier",
        "steps": steps,
        "batch-size": 32,
        "physical-batch-size": 8,
        "max-length": 16,
        "epsilon": 8,
        **extra,
    }
    return [f"--{k}={v}" for k, v in given.items()] + ["--no-progress", "--device=cpu"]  # gloo, also on a GPU machine


def torchrun(run_dir, args, nproc=2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] + [
        "-m",
        "spectral.collect",
        str(run_dir),
        *args,
    ]


def relative_row_error(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).max(axis=1) / np.linalg.norm(a, axis=1)).max())


def test_two_ranks_store_what_one_process_stores(cli, tmp_path, tiny_model, tiny_data):
    args = settings(tiny_model, tiny_data, 8, **{"eval-every": 4, "params": "all", "probe-batches": "8,40"}) + [
        "--streams",
        "clipped",
        "private",
    ]  # probes: the ranks split each probe draw, and the prefix sums are the whole draw's
    two = subprocess.run(torchrun(tmp_path / "two", args), capture_output=True, text=True, env=ENV, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("stored in") == 1  # rank 0 alone reports
    one = cli("spectral.collect", tmp_path / "one", *args, env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]

    a, b = store.open(tmp_path / "one"), store.open(tmp_path / "two")
    assert b.manifest["world_size"] == 2 and a.manifest["world_size"] == 1
    assert b.table("launches").to_dict("records") == [{"step": 0, "world_size": 2, "device": "cpu"}]
    # the clipped mean of the whole logical batch, not of one rank's share (float32 sums in another order)
    assert relative_row_error(a.rows("clipped"), b.rows("clipped")) < 1e-5
    for probe in ("probe8", "probe40"):  # the nested prefix means of the draw, not of one rank's share
        x, y = a.rows(probe).astype(np.float64), b.rows(probe).astype(np.float64)
        # against the scale of a mean of clipped gradients, C (a row can nearly cancel: its own norm is no
        # scale); float32 sums over other chunk paddings differ by 5e-9 here
        assert np.linalg.norm(x - y, axis=1).max() < 1e-6 * b.manifest["config"]["max_grad_norm"]
    for column in ("batch_size", "loss", "frac_clipped", "mean_example_norm", "clipped_norm"):
        np.testing.assert_allclose(a.steps[column], b.steps[column], rtol=1e-5)
    np.testing.assert_allclose(a.table("eval").accuracy, b.table("eval").accuracy)

    # the noise enters once: private - clipped ~ N(0, (sigma C / B)^2) per coordinate, B = q n
    dp = b.manifest["dp"]
    noise = b.rows("private") - b.rows("clipped")
    expected = dp["noise_multiplier"] * dp["max_grad_norm"] / (dp["sample_rate"] * dp["n_train"])
    assert noise.std() == pytest.approx(expected, rel=0.03)  # 8 x 494k draws; two draws would be x1.41


def manifest(run_dir) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (Linux /proc)."""
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_a_killed_rank_stops_the_job_and_resume_stores_each_step_once(cli, tmp_path, tiny_model, tiny_data):
    steps = 100  # far more than the 5 it waits for: a fast machine must not finish before the kill
    extra = {"params": "attention-qv", "checkpoint-every": 5, "eval-every": 0, "physical-batch-size": 32,
             "probe-batches": "8,40"}  # probes resume too, from two ranks to one  # fmt: skip
    args = settings(tiny_model, tiny_data, steps, **extra)  # one chunk a step: fast
    run_dir = tmp_path / "killed"
    job = subprocess.Popen(torchrun(run_dir, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while manifest(run_dir).get("n_steps", 0) < 5:
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.kill(rank_pid(job.pid, 1), signal.SIGKILL)
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    stopped = manifest(run_dir)
    # rank 0 closes the store with one message when SIGTERM or a collective error reaches it; blocked
    # inside a gloo collective it may instead be SIGKILLed by torchrun, and the store stays at its last
    # commit (status "running"), which resumes the same way
    if "keeps every step up to its last commit; continue with --resume" in err:
        assert stopped["status"] == "interrupted"
    else:
        assert stopped["status"] == "running" and "SIGKILL" in err
    assert 5 <= stopped["n_steps"] < steps

    # resumed by one process: every step once, and the trajectory of an uninterrupted run
    resumed = cli("spectral.collect", run_dir, "--resume", "--no-progress", "--device=cpu", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = cli("spectral.collect", tmp_path / "reference", *args, env=ENV)
    assert reference.returncode == 0, reference.stderr[-3000:]
    a, b = store.open(tmp_path / "reference"), store.open(run_dir)
    assert b.manifest["status"] == "complete"
    assert list(b.steps.step) == list(range(steps))
    assert list(b.table("launches").step) == [0, stopped["n_steps"]]
    assert list(b.table("launches").world_size) == [2, 1]
    assert relative_row_error(a.rows("clipped"), b.rows("clipped")) < 1e-5
    for probe in ("probe8", "probe40"):  # the nested prefix means of the draw, not of one rank's share
        x, y = a.rows(probe).astype(np.float64), b.rows(probe).astype(np.float64)
        # against the scale of a mean of clipped gradients, C (a row can nearly cancel: its own norm is no
        # scale); float32 sums over other chunk paddings differ by 5e-9 here
        assert np.linalg.norm(x - y, axis=1).max() < 1e-6 * b.manifest["config"]["max_grad_norm"]


def test_two_ranks_with_bookkeeping_and_the_sampling_stream_store_what_one_process_stores(
    cli, tmp_path, tiny_model, tiny_data
):
    """Book-keeping clipping, the sampling stream and probes under torch.distributed: the halves are split
    over the whole logical batch (a function of seed and step) and half A's clipped sum is all-reduced; each
    probe draw is split over the ranks and its prefix sums are all-reduced."""
    extra = {"eval-every": 0, "params": "attention-qv", "clipping": "bookkeeping", "probe-batches": "8,40"}
    args = settings(tiny_model, tiny_data, 6, **extra) + ["--streams", "clipped", "sampling"]
    two = subprocess.run(torchrun(tmp_path / "two", args), capture_output=True, text=True, env=ENV, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli("spectral.collect", tmp_path / "one", *args, env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = store.open(tmp_path / "one"), store.open(tmp_path / "two")
    assert relative_row_error(a.rows("clipped"), b.rows("clipped")) < 1e-5
    for probe in ("probe8", "probe40"):  # the nested prefix means of the draw, not of one rank's share
        x, y = a.rows(probe).astype(np.float64), b.rows(probe).astype(np.float64)
        # against the scale of a mean of clipped gradients, C (a row can nearly cancel: its own norm is no
        # scale); float32 sums over other chunk paddings differ by 5e-9 here
        assert np.linalg.norm(x - y, axis=1).max() < 1e-6 * b.manifest["config"]["max_grad_norm"]
    assert relative_row_error(a.rows("sampling"), b.rows("sampling")) < 1e-5
    assert np.abs(a.rows("sampling")).sum() > 0
