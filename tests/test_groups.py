"""Per-group spectra from the Gram pass (analyse --groups) against dense numpy on each group's columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import spectral.store as store_mod
from spectral.analyse import AnalyseConfig, analyse
from spectral.analyse.groups import column_groups, group_of
from spectral.analyse.run import plan
from spectral.errors import SpectralError

LAYOUT = [  # a BERT-like layout: two blocks' q/v, then a head outside any block
    ("bert.encoder.layer.0.attention.self.query.weight", 40),
    ("bert.encoder.layer.0.attention.self.query.bias", 4),
    ("bert.encoder.layer.0.attention.self.value.weight", 40),
    ("bert.encoder.layer.1.attention.self.query.weight", 60),
    ("bert.encoder.layer.1.attention.self.value.weight", 60),
    ("classifier.weight", 16),
]


def grouped_store(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    layout, offset = [], 0
    for name, numel in LAYOUT:
        layout.append({"name": name, "shape": [numel], "offset": offset, "numel": numel})
        offset += numel
    # each block with its own scale and rank, so the groups' spectra differ
    H = rng.standard_normal((n, offset)) * np.repeat([1.0, 0.5, 2.0, 0.3, 0.3, 4.0], [n for _, n in LAYOUT])
    H[:, 144:204] = rng.standard_normal((n, 2)) @ rng.standard_normal((2, 60))  # layer 1's value: rank 2
    w = store_mod.StoreWriter.create(root, layout=layout, streams=["clipped"], dtype="float32", shard_rows=5,
                                     meta={}, tile_cols=32)  # fmt: skip
    for t, row in enumerate(H.astype(np.float32)):
        w.append(t, {"clipped": row}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return H.astype(np.float32).astype(np.float64), layout


@pytest.mark.parametrize(
    "name, group",
    [
        ("bert.encoder.layer.3.attention.self.query.weight", "bert.encoder.layer.3"),
        ("transformer.h.11.attn.c_attn.weight", "transformer.h.11"),
        ("model.layers.0.self_attn.q_proj.weight", "model.layers.0"),
        ("classifier.weight", "classifier.weight"),
        ("roberta.embeddings.word_embeddings.weight", "roberta.embeddings.word_embeddings.weight"),
    ],
)
def test_a_tensor_belongs_to_its_transformer_block(name, group):
    assert group_of(name, "layer") == group
    assert group_of(name, "param") == name


def test_groups_partition_the_columns():
    _, layout = (
        None,
        [
            {"name": n, "offset": o, "numel": k}
            for (n, k), o in zip(LAYOUT, np.cumsum([0] + [k for _, k in LAYOUT])[:-1])
        ],
    )
    layers = column_groups(layout, "layer")
    assert list(layers) == ["bert.encoder.layer.0", "bert.encoder.layer.1", "classifier.weight"]
    assert layers["bert.encoder.layer.0"] == [(0, 84)]  # adjacent tensors merged into one range
    spans = sorted(span for spans in column_groups(layout, "param").values() for span in spans)
    assert spans[0][0] == 0 and spans[-1][1] == 220 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("grouping", ["layer", "param"])
def test_each_groups_eigenvalues_are_those_of_its_columns(tmp_path, grouping):
    H, layout = grouped_store(tmp_path / "run")
    spec = analyse(tmp_path / "run", AnalyseConfig(k=10, groups=grouping), progress=False, device="cpu")
    out = tmp_path / "run" / "analysis" / "clipped"
    eig, summary = pd.read_csv(out / "groups.csv"), pd.read_csv(out / "groups_summary.csv").set_index("group")
    groups = column_groups(layout, grouping)
    for name, spans in groups.items():
        Hg = np.concatenate([H[:, a:b] for a, b in spans], axis=1)
        dense = np.linalg.eigvalsh(Hg @ Hg.T)[::-1]
        got = eig[eig.group == name].sort_values("rank").eigenvalue.to_numpy()
        np.testing.assert_allclose(got, dense[: len(got)], rtol=1e-6)
        assert len(got) == np.linalg.matrix_rank(Hg, rtol=1e-5)  # every positive one; float32 rounding aside
        assert summary.loc[name, "d"] == Hg.shape[1]
        assert summary.loc[name, "top1_energy"] == pytest.approx(dense[0] / dense.sum(), rel=1e-6)
    if grouping == "param":  # the rank-2 tensor shows as such
        assert len(eig[eig.group == "bert.encoder.layer.1.attention.self.value.weight"]) == 2
    # the groups sum to the whole: the main spectrum is unchanged
    np.testing.assert_allclose(spec.eigenvalues, np.linalg.eigvalsh(H @ H.T)[::-1][:10], rtol=1e-6)
    assert summary.energy_share.sum() == pytest.approx(1.0)


def test_groups_that_do_not_fit_are_one_clear_error(tmp_path):
    grouped_store(tmp_path / "run", n=24)
    budget = 8 * 24 * 24 * 4  # room for 4 Gram matrices: layer (3 groups) fits, param (6) does not
    with pytest.raises(SpectralError, match="--groups layer would fit"):
        plan(tmp_path / "run", AnalyseConfig(groups="param", max_memory=budget), cold=False)
    assert plan(tmp_path / "run", AnalyseConfig(groups="layer", max_memory=10 * 2**20), cold=False).groups == 3


def test_the_report_fits_and_draws_each_group(tmp_path):
    """The report's group fits: each slope is spectrum_fit of that group's σ_k, drawn as fig8 with its data."""
    from spectral.report import ReportConfig, fits, report

    grouped_store(tmp_path / "run", n=24)
    analyse(tmp_path / "run", AnalyseConfig(k=10, groups="layer"), progress=False, device="cpu")
    result = report(tmp_path / "run", ReportConfig(fit_range=(1, 20)))
    table = pd.DataFrame(result["fits"]["groups"]).set_index("group")
    eig = pd.read_csv(tmp_path / "run" / "analysis" / "clipped" / "groups.csv")
    for name in table.index:
        lam = eig[eig.group == name].sort_values("rank").eigenvalue.to_numpy()
        expected = fits.spectrum_fit(np.sqrt(lam), (1, min(20, len(lam))))["slope"]
        assert table.loc[name, "slope"] == pytest.approx(expected)
    assert (tmp_path / "run" / "figures" / "fig8_groups.png").is_file()
    assert (tmp_path / "run" / "figures" / "fig8_groups.csv").is_file()
