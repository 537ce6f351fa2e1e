"""What several test modules share: synthetic trajectories and stores, the tiny-model helpers and
the per-example reference loop, and the collect command line of the small runs."""

from __future__ import annotations

import copy

import numpy as np
import torch

import spectral.store as store
from spectral.dp.data import TextData
from spectral.dp.models import load_model, select_trainable
from spectral.dp.training import Batcher

N, D = 60, 3000


def power_law_trajectory(n=N, d=D, slope=1.0, seed=0) -> np.ndarray:
    """H = U diag(s) Vᵀ with singular values s_j = j^-slope (a gradient-like spectrum)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((d, n)))
    s = np.arange(1, n + 1, dtype=float) ** -slope
    return ((U * s) @ V.T).astype(np.float32)


def write_store(root, H, dtype="float32", tile_cols=512):
    """H row by row through the writer collect uses: shards of 7 rows in column tiles (the last
    tile narrower), so every analyse test reads tiled shards."""
    layout = [{"name": "w", "shape": [H.shape[1]], "offset": 0, "numel": H.shape[1]}]
    w = store.StoreWriter.create(
        root, layout=layout, streams=["clipped"], dtype=dtype, shard_rows=7, meta={}, tile_cols=tile_cols
    )
    for i, row in enumerate(H):
        w.append(i, {"clipped": row}, {"loss": 0.0})
    w.commit(status="complete")
    w.close()
    return store.open(root)


TEXTS = [
    "a good film",
    "bad",
    "the plot is dull and the acting is weak",
    "lovely , moving and funny",
    "messy",
    "a superb cast in a boring story that never ends",
    "fine",
    "tedious and bland work",
]
LABELS = np.array([1, 0, 0, 1, 0, 1, 1, 0])


def tiny_model_of(path, params="all", dtype=torch.float64):
    """float64 by default: the comparison measures the method, not rounding. LoRA's B starts at zero
    (so A's gradient would be zero): here it is drawn at random."""
    model, tok = load_model(str(path), num_labels=2, seed=0)
    model = select_trainable(model, params).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model, tok


def text_chunks(tok, size, model=None):
    return Batcher(model, tok, TextData(TEXTS, LABELS), 32).chunks(np.arange(len(TEXTS)), size)


def per_example_gradients(model, chunks) -> list:
    """The flat gradient of each example alone (sliced out of its padded chunk), by a plain loop."""
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for inputs, labels in chunks:
        for i in range(len(labels)):
            model.zero_grad()
            one = {k: v[i : i + 1] for k, v in inputs.items()}
            torch.nn.functional.cross_entropy(model(**one).logits, labels[i : i + 1]).backward()
            grads.append(torch.cat([p.grad.double().reshape(-1) for p in params]))
    return grads


def brute_force_clipped_sum(model, chunks, C):
    """Loop over single examples: clip each gradient to norm C, then sum."""
    grads = per_example_gradients(model, chunks)
    norms = np.array([g.norm().item() for g in grads])
    total = sum(g * min(1.0, C / (n + 1e-6)) for g, n in zip(grads, norms))
    return total, norms


def clipping_engine(model, clipping: str, C: float, batch: float = 1.0, sigma: float = 0.0, seed: int = 0):
    """A DP engine that only clips (SGD at lr 0, no noise unless ``sigma``): for comparing its sums."""
    from spectral.dp.engine import DPEngine

    return DPEngine(
        model,
        clipping=clipping,
        optimizer="sgd",
        lr=0.0,
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=batch,
        seed=seed,
    )


def collect_args(model, data, out, *extra, eval_every: int = 3):
    """``python -m spectral.collect`` on a tiny model and data: batch 16 in chunks of 8."""
    return [
        "spectral.collect",
        "--model",
        model,
        "--data",
        data,
        out,
        "--no-progress",
        "--batch-size",
        "16",
        "--physical-batch-size",
        "8",
        "--eval-every",
        str(eval_every),
        *extra,
    ]
