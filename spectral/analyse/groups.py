"""Spectra per group of parameters, from the Gram pass that already runs (``analyse --groups``).

The stored row is the flat concatenation of the trained tensors (the manifest's ``layout``: name, offset,
numel). Splitting its columns into groups splits the Gram matrix into a sum, H Hᵀ = Σ_g H_g H_gᵀ, so
the pass accumulates each group's n × n block-Gram instead of the whole (no extra read, the same
arithmetic) and each group's eigenvalues are those of its own trajectory of sub-rows.

``param``  one group per trained tensor (``...layer.3.attention.self.query.weight``)
``layer``  one group per transformer block: tensors whose name holds ``layer.<i>.`` (BERT/RoBERTa),
           ``h.<i>.`` (GPT-2) or ``layers.<i>.``/``block.<i>.``/``blocks.<i>.``; each tensor outside a
           block (a head, embeddings) is its own group

Memory: 8 n² bytes per group (``--plan`` counts it).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..errors import SpectralError

GROUPINGS = ("none", "layer", "param")
BLOCK = re.compile(r"^(.*?(?:^|\.)(?:layer|layers|h|block|blocks)\.\d+)\.")


def group_of(name: str, grouping: str) -> str:
    """The group a trained tensor ``name`` belongs to under ``grouping`` (``layer`` or ``param``)."""
    if grouping == "param":
        return name
    match = BLOCK.match(name)
    return match.group(1) if match else name


def column_groups(layout: list, grouping: str) -> dict:
    """``{group: [(start, stop), ...]}`` column ranges of each group of ``layout`` (the store's parameter
    records, or dicts with name, offset, numel), in layout order; all groups' ranges partition 0…d."""
    if grouping not in GROUPINGS[1:]:
        raise SpectralError(f"unknown grouping {grouping!r}; choose from {', '.join(GROUPINGS)}")
    groups: dict = {}
    for p in layout:
        p = p if isinstance(p, dict) else vars(p)  # the store's Param records or the manifest's dicts
        start, stop = int(p["offset"]), int(p["offset"]) + int(p["numel"])
        spans = groups.setdefault(group_of(p["name"], grouping), [])
        if spans and spans[-1][1] == start:  # adjacent tensors of one group: one range
            spans[-1] = (spans[-1][0], stop)
        else:
            spans.append((start, stop))
    return groups


def memory_bytes(n: int, n_groups: int) -> int:
    """What the groups' Gram matrices hold: 8 n² bytes each."""
    return 8 * n * n * n_groups


def group_spectra(grams: dict, groups: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per group, from its Gram matrix: (eigenvalues: ``group, rank, eigenvalue``, every positive one,
    descending; summary: ``group, d, energy_share, top1_energy, top10_energy, positive``; in-sample G_k:
    ``group`` and the columns of :func:`spectral.analyse.rlc.summarize`). The report fits slopes and
    exponents to these (``figures/groups_fits.csv``)."""
    from . import rlc

    rows, summary, curves = [], [], []
    total = sum(float(np.trace(G)) for G in grams.values())
    for name, G in grams.items():
        lam, curve = rlc.in_sample_from_gram(G)
        positive = lam[lam > max(lam[0], 0) * len(G) * 1e-12]
        rows += [{"group": name, "rank": k + 1, "eigenvalue": float(v)} for k, v in enumerate(positive)]
        trace = float(np.trace(G))
        share = (lambda x: float(x / trace)) if trace > 0 else (lambda x: float("nan"))
        summary.append(
            {
                "group": name,
                "d": int(sum(b - a for a, b in groups[name])),
                "energy_share": float(trace / total) if total > 0 else float("nan"),
                "top1_energy": share(positive[:1].sum()),
                "top10_energy": share(positive[:10].sum()),
                "positive": len(positive),
            }
        )
        curves.append(curve.assign(group=name))
    return pd.DataFrame(rows), pd.DataFrame(summary), pd.concat(curves, ignore_index=True)
