"""`python -m spectral.collect` as a user runs it: stores, parameter sets, bad input, kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_main
from helpers import collect_args

import spectral.store as store
from spectral.dp.models import load_model, parameter_layout, select_trainable


def test_cli_writes_a_store_the_reader_opens(cli, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = cli(
        *collect_args(
            tiny_model,
            tiny_data,
            out,
            "--steps",
            "7",
            "--checkpoint-every",
            "4",
            "--streams",
            "clipped",
            "private",
            "--epsilon",
            "4",
        )
    )
    assert result.returncode == 0, result.stderr
    s = store.open(out, verify=True)
    assert s.n_steps == 7 and s.streams == ["clipped", "private"] and s.manifest["status"] == "complete"
    assert all(("query" in p.name or "value" in p.name) for p in s.layout)
    assert s.d == sum(p.numel for p in s.layout) == 2 * 2 * (16 * 16 + 16)
    steps = s.steps
    assert list(steps["step"]) == list(range(7))
    assert {"loss", "lr", "epsilon", "clipped_norm", "frac_clipped", "batch_size"} <= set(steps.columns)
    assert steps["epsilon"].is_monotonic_increasing and steps["epsilon"].iloc[-1] == pytest.approx(4.0, abs=0.05)
    np.testing.assert_allclose(np.linalg.norm(s.rows("clipped"), axis=1), steps["clipped_norm"], rtol=1e-5)
    dp = s.manifest["dp"]
    noise = (s.rows("private") - s.rows("clipped")) * dp["sample_rate"] * dp["n_train"]
    assert noise.std() == pytest.approx(dp["noise_multiplier"] * dp["max_grad_norm"], rel=0.05)
    assert list(s.table("eval")["step"]) == [-1, 2, 5, 6]  # -1: the starting point, before any update
    assert s.manifest["data"]["n_train"] + s.manifest["data"]["n_dev"] == 240
    named = s.unflatten(s.rows("clipped")[0])
    assert named[s.layout[0].name].shape == s.layout[0].shape


@pytest.mark.parametrize("params", ["all", "attention-qv", "classifier", "lora"])
def test_parameter_sets_train_what_they_say(tiny_model, params):
    model, _ = load_model(str(tiny_model), num_labels=2, seed=0)
    total = sum(p.numel() for p in model.parameters())
    model = select_trainable(model, params, lora_rank=4)
    names = [p["name"] for p in parameter_layout(model)]
    d = sum(p["numel"] for p in parameter_layout(model))
    h, layers = 16, 2
    expected = {
        "all": total,
        "attention-qv": layers * 2 * (h * h + h),
        "classifier": 2 * h + 2,
        "lora": layers * 2 * (4 * h + h * 4),
    }[params]
    assert d == expected
    if params == "lora":
        assert all("lora_" in n for n in names)


def test_lora_and_all_run_under_both_clipping_modes(cli, tiny_model, tiny_data, tmp_path):
    for params, clipping in [("lora", "ghost"), ("all", "per-sample")]:
        out = tmp_path / f"{params}-{clipping}"
        result = cli(
            *collect_args(tiny_model, tiny_data, out, "--steps", "2", "--params", params, "--clipping", clipping)
        )
        assert result.returncode == 0, result.stderr
        assert store.open(out).n_steps == 2


def _assert_one_clear_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:")
    for fragment in fragments:
        assert fragment in last, last


def test_bad_input_is_one_clear_error(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    _assert_one_clear_error(run_main(*collect_args(tmp_path / "no-model", tiny_data, out)), "does not exist")
    _assert_one_clear_error(run_main(*collect_args(tiny_model, tiny_data, out, "--params", "mlp")), "unknown params")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    _assert_one_clear_error(run_main(*collect_args(tiny_model, empty, out)), "empty")
    unlabeled = tmp_path / "unlabeled.csv"
    pd.DataFrame({"text": ["a", "b", "c"] * 20}).to_csv(unlabeled, index=False)
    _assert_one_clear_error(run_main(*collect_args(tiny_model, unlabeled, out)), "no label column")
    _assert_one_clear_error(run_main(*collect_args(tiny_model, tiny_data, out, "--steps", str(10**12))), "GiB")
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    (out / "notes").mkdir(parents=True)
    _assert_one_clear_error(run_main(*collect_args(tiny_model, tiny_data, out)), "--resume", "--overwrite")
    _assert_one_clear_error(run_main(*collect_args(tiny_model, tiny_data, out, "--overwrite")), "not a spectral store")
    assert (out / "notes").is_dir()  # a directory that is not a store is never deleted


def test_non_finite_gradient_stops_and_keeps_the_store(cli, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = cli(
        *collect_args(
            tiny_model,
            tiny_data,
            out,
            "--steps",
            "20",
            "--optimizer",
            "sgd",
            "--lr",
            "1e38",
            "--lr-schedule",
            "constant",
            "--eval-every",
            "0",
        )
    )
    _assert_one_clear_error(result, "non-finite")
    s = store.open(out, verify=True)
    assert 1 <= s.n_steps < 20 and s.manifest["status"] == "stopped"
    assert np.isfinite(s.rows("clipped")).all()
    # resuming a stopped run meets the same step again: the same error, the stored steps untouched
    again = cli("spectral.collect", out, "--resume", "--no-progress")
    _assert_one_clear_error(again, "non-finite")
    assert store.open(out, verify=True).n_steps == s.n_steps


def test_ctrl_c_keeps_the_last_commit_and_resume_completes(cli, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        *map(str, collect_args(tiny_model, tiny_data, out, "--steps", "60", "--checkpoint-every", "4")),
    ]
    # a shell's background job ignores SIGINT and its children inherit that: give the run Python's handler
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    )
    deadline = time.time() + 300
    while _manifest_steps(out) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "interrupted; " in err and "keeps every step up to its last commit; continue with --resume" in err
    stopped = store.open(out, verify=True)
    assert stopped.manifest["status"] == "interrupted" and stopped.n_steps % 4 == 0 and 8 <= stopped.n_steps < 60
    result = cli("spectral.collect", out, "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert list(store.open(out, verify=True).steps.step) == list(range(60))


def _manifest_steps(out):
    try:
        return json.loads((out / "manifest.json").read_text())["n_steps"]
    except (OSError, ValueError):
        return 0


def test_kill_9_then_resume_equals_an_uninterrupted_run(cli, tiny_model_dropout, tiny_data, tmp_path):
    args = ["--steps", "36", "--checkpoint-every", "4", "--streams", "clipped", "private", "--seed", "3"]
    reference = tmp_path / "reference"
    assert cli(*collect_args(tiny_model_dropout, tiny_data, reference, *args)).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", *map(str, collect_args(tiny_model_dropout, tiny_data, out, *args))],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _manifest_steps(out) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = store.open(out, verify=True)
    assert 12 <= killed.n_steps < 36 and killed.n_steps % 4 == 0 and killed.manifest["status"] == "running"

    mismatch = cli(*collect_args(tiny_model_dropout, tiny_data, out, *args[:-1], "4", "--resume"))
    _assert_one_clear_error(mismatch, "differ")
    result = cli("spectral.collect", out, "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr

    resumed, ref = store.open(out, verify=True), store.open(reference)
    assert resumed.n_steps == 36 and resumed.manifest["status"] == "complete"
    assert list(resumed.steps["step"]) == list(range(36))  # every step exactly once
    assert list(resumed.table("eval")["step"]) == list(ref.table("eval")["step"])
    for stream in ("clipped", "private"):
        np.testing.assert_allclose(resumed.rows(stream), ref.rows(stream), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed.steps["epsilon"], ref.steps["epsilon"], rtol=1e-9)
    assert len(list((out / "checkpoint").iterdir())) == 2


def test_bookkeeping_rows_equal_ghost_rows_and_auto_is_recorded(cli, tiny_model, tiny_data, tmp_path):
    """Book-keeping and ghost clipping store the same clipped rows (float32 rounding) for the same run;
    --clipping auto decides once and the manifest says what and why."""
    rows = {}
    for clipping in ("ghost", "bookkeeping", "auto"):
        out = tmp_path / clipping
        extra = ("--steps", "20", "--params", "attention-qv", "--clipping", clipping, "--eval-every", "0")
        result = cli(*collect_args(tiny_model, tiny_data, out, *extra))
        assert result.returncode == 0, result.stderr
        s = store.open(out)
        rows[clipping] = s.rows("clipped")
        if clipping == "auto":
            assert s.manifest["config"]["clipping"] in ("per-sample", "bookkeeping")
            assert s.manifest["clipping"]["reason"].startswith("auto: ")
        else:
            assert s.manifest["clipping"] == {"method": clipping, "reason": "requested"}
    scale = np.abs(rows["ghost"]).max()
    np.testing.assert_allclose(rows["bookkeeping"], rows["ghost"], atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(rows["auto"], rows["ghost"], atol=1e-5 * scale, rtol=1e-4)
