"""Every ``python -m spectral.bench`` command runs at a tiny size and prints what it measured."""

from __future__ import annotations

import os
import re

import pytest
from conftest import run_cli


def bench(*args):
    proc = run_cli("spectral.bench", *args, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_collect(cli, tiny_model, tiny_data):
    out = bench(
        "collect", "--params", "attention-qv", "--batch-size", 8, "--physical-batch-size", 4, "--warmup", 1,
        "--steps", 1, "--model", tiny_model, "--data", tiny_data,
    )  # fmt: skip
    for mode in ("non-private", "dp-per-sample", "dp-ghost", "dp-bookkeeping", "dp-bookkeeping+store"):
        assert f"| attention-qv | 1,088 | {mode} |" in out
    assert "logging overhead (dp-bookkeeping+store vs dp-bookkeeping)" in out
    assert "accountant per step after 1000 steps" in out


def test_bench_collect_nproc(cli, tiny_model, tiny_data):
    out = bench(
        "collect", "--nproc", 2, "--steps", 3, "--batch-size", 16, "--physical-batch-size", 8,
        "--model", tiny_model, "--data", tiny_data,
    )  # fmt: skip
    error = float(re.search(r"max \|difference\| / row norm = (\d\.\de[+-]\d+)", out).group(1))
    assert error < 1e-5 and "| 2 |" in out


def test_bench_retrain(cli, tiny_model, tiny_data):
    out = bench(
        "retrain", "--ranks", 2, "--steps", 1, "--warmup", 1, "--model", tiny_model, "--data", tiny_data,
        "--batch-size", 8,
    )  # fmt: skip
    for variant in ("unrestricted", "rank 2, signal", "rank 2, signal+noise", "rank 2, coordinates"):
        assert f"| {variant} |" in out


@pytest.mark.parametrize("what", ["analyse", "dask"])
def test_bench_analyse_and_dask(cli, tmp_path, what):
    if what == "analyse":
        args = ["--n", 40, "--d", 3000, "--k", 5, "--methods", "ours", "sklearn", "--timeout", 120]
    else:
        args = ["--n", 40, "--d", 3000, "--k", 5, "--workers", 2]
    out = bench(what, *args, "--dir", tmp_path / "bench")
    rows = {cells[0]: cells for cells in _table_rows(out)}
    if what == "analyse":  # both methods measured, each accurate against the exact reference
        assert {"ours", "sklearn"} <= set(rows)
        for method in ("ours", "sklearn"):
            seconds, rel_error = float(rows[method][2]), float(rows[method][5])
            assert seconds > 0 and rel_error < 1e-3, rows[method]
    else:  # both paths timed, and the same answer
        assert len(rows) == 2 and all(float(r[1]) > 0 for r in rows.values())
        difference = float(out.split("max relative eigenvalue difference")[1].split()[0])
        assert difference < 1e-4, out


def _table_rows(out: str) -> list[list[str]]:
    """The body rows of the markdown table in ``out``, as stripped cells."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_bench_analyse_cold_at_a_tiny_shape(cli, tmp_path):
    """The paper-shape bench's command at a tiny shape: both stores, the table, the legacy line skipped."""
    out = bench("analyse", "--cold", "--n", 60, "--d", 3000, 5000, "--k", 10, "--dir", tmp_path / "cold")
    for d in ("3,000", "5,000"):
        assert f"| {d} |" in out
    assert "our reader alone (/ sequential)" in out and "peak RSS" in out
    assert not list((tmp_path / "cold").glob("store-*"))  # the stores are deleted afterwards
