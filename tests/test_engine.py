"""The DP engine against brute force: per-example clipping by a loop, noise by its moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LABELS, TEXTS, brute_force_clipped_sum, clipping_engine, text_chunks, tiny_model_of

from spectral.dp.data import TextData
from spectral.dp.engine import DPEngine, NonFiniteGradient
from spectral.dp.models import parameter_layout, select_trainable
from spectral.dp.training import Batcher


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
@pytest.mark.parametrize(
    "params, physical, dtype, tol",
    [
        ("all", 8, torch.float64, 1e-5),
        ("all", 3, torch.float64, 1e-5),  # 3: one logical step accumulated over 3 chunks
        ("lora", 3, torch.float64, 1e-5),  # adapters on q/v: Opacus' hooks on peft's layers
        ("all", 3, torch.float32, 1e-4),  # the production dtype
    ],
)
def test_clipped_sum_equals_loop_over_examples(tiny_model, clipping, params, physical, dtype, tol):
    model, tok = tiny_model_of(tiny_model, params, dtype)
    chunks = text_chunks(tok, physical)
    _, norms = brute_force_clipped_sum(model, chunks, C=1e9)
    C = float(np.median(norms))  # half the examples are clipped, half are not
    expected, _ = brute_force_clipped_sum(model, chunks, C)
    B = 5.0  # expected batch size divides the sum
    engine = clipping_engine(model, clipping, C, B)
    out = engine.step(chunks, lr=0.0)
    got = out.clipped * B
    rel = (got.double() - expected).norm() / expected.norm()
    assert rel < tol, rel
    np.testing.assert_allclose(out.per_example_norms.double().numpy(), norms, rtol=10 * tol)
    torch.testing.assert_close(out.private, out.clipped)  # no noise: both streams agree
    assert out.batch_size == len(TEXTS)


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
def test_noise_has_the_calibrated_std(tiny_model, clipping):
    model, tok = tiny_model_of(tiny_model)
    sigma, C, B = 1.7, 0.3, 4.0
    engine = clipping_engine(model, clipping, C, B, sigma=sigma, seed=3)
    out = engine.step(text_chunks(tok, 8), lr=0.0)
    noise = ((out.private - out.clipped) * B).double()
    d = noise.numel()
    # the sample std of d Gaussians has relative standard error 1/sqrt(2d); allow 5 of them
    assert abs(noise.std().item() / (sigma * C) - 1) < 5 / np.sqrt(2 * d)
    assert abs(noise.mean().item()) < 5 * sigma * C / np.sqrt(d)


def test_update_is_applied_with_the_private_gradient(tiny_model):
    model, tok = tiny_model_of(tiny_model, params="attention-qv")
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters() if p.requires_grad])
    engine = DPEngine(
        model,
        clipping="ghost",
        optimizer="sgd",
        lr=0.1,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        expected_batch_size=8,
        seed=0,
    )
    out = engine.step(text_chunks(tok, 4), lr=0.1)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(after, before - 0.1 * out.private, rtol=1e-5, atol=1e-7)
    assert out.clipped.numel() == sum(p["numel"] for p in parameter_layout(model))


def test_empty_poisson_batch_releases_noise_only(tiny_model):
    model, _ = tiny_model_of(tiny_model, params="classifier")
    engine = DPEngine(
        model,
        clipping="ghost",
        optimizer="sgd",
        lr=0.0,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
        seed=0,
    )
    outs = [engine.step([], lr=0.0) for _ in range(100)]  # 100 x 34 draws: the std to within 6%
    assert outs[0].batch_size == 0 and len(outs[0].per_example_norms) == 0  # an empty batch: no examples
    assert all(o.batch_size == 0 and torch.count_nonzero(o.clipped) == 0 for o in outs)
    # pure noise N(0, (σC)²) per coordinate, divided by the expected batch size
    noise = torch.stack([o.private * 2 for o in outs]).double()
    assert abs(noise.std().item() / 1.0 - 1) < 5 / np.sqrt(2 * noise.numel())


def test_non_finite_gradient_stops_before_the_update(tiny_model):
    model, tok = tiny_model_of(tiny_model, params="classifier")
    engine = DPEngine(
        model,
        clipping="per-sample",
        optimizer="sgd",
        lr=0.1,
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=8,
        seed=0,
    )
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    before = model.classifier.bias.detach().clone()
    with pytest.raises(NonFiniteGradient, match=r"^the gradient became non-finite \(NaN or inf\); stopped before"):
        engine.step(text_chunks(tok, 8), lr=0.1)
    torch.testing.assert_close(model.classifier.bias.detach(), before)


def test_state_roundtrip_continues_identically(tiny_model_dropout):
    """Saving after step 1 and restoring into a fresh engine reproduces steps 2 and 3 exactly (dropout on),
    and the parameters after step 3, which depend on Adam's restored moments."""

    def engine_for():
        model, tok = tiny_model_of(tiny_model_dropout, params="attention-qv")
        return DPEngine(
            model,
            clipping="ghost",
            optimizer="adam",
            lr=1e-2,
            noise_multiplier=1.0,
            max_grad_norm=0.5,
            expected_batch_size=8,
            seed=5,
        ), tok

    a, tok = engine_for()
    chunks = text_chunks(tok, 4)
    a.step(chunks, lr=1e-2)
    state = a.state()
    expected = [a.step(chunks, lr=1e-2) for _ in range(2)]
    b, _ = engine_for()
    b.load_state(state)
    got = [b.step(chunks, lr=1e-2) for _ in range(2)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.private, e.private)
        torch.testing.assert_close(g.clipped, e.clipped)
    for p, q in zip(a.params, b.params):  # Adam's moments (not only the gradients) were restored
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    c, _ = engine_for()  # the check can fail: without the optimizer state the parameters differ
    c.load_state({k: v for k, v in state.items() if not k.startswith("optim.")})
    for _ in range(2):
        c.step(chunks, lr=1e-2)
    assert any(not torch.equal(p, q) for p, q in zip(a.params, c.params))


def test_mean_pooled_classifier_clips_exactly(tiny_model):
    """The mean-pooling head (used for sentence-transformers checkpoints) under both clipping modes."""
    from spectral.dp.models import MeanPooledClassifier

    for clipping in ("ghost", "per-sample"):
        base, tok = tiny_model_of(tiny_model)
        base.bert.pooler = None  # as load_model does: an unused pooler gets no gradient
        model = MeanPooledClassifier(base.bert, 2).double()
        model = select_trainable(model, "all")
        chunks = text_chunks(tok, 4)
        expected, norms = brute_force_clipped_sum(model, chunks, C=0.05)
        engine = clipping_engine(model, clipping, 0.05, 1.0)
        out = engine.step(chunks, lr=0.0)
        assert (out.clipped - expected).norm() / expected.norm() < 1e-5
        np.testing.assert_allclose(out.per_example_norms.numpy(), norms, rtol=1e-4)


def test_a_noise_state_from_another_device_type_reseeds_deterministically(tiny_model):
    """A CUDA generator's state (16 bytes of Philox) cannot load into a CPU generator (and back): a
    run collected on a GPU and resumed on a CPU continues with noise seeded by the saved state."""

    def engine():
        model, _ = tiny_model_of(tiny_model, params="classifier")
        return DPEngine(
            model, clipping="ghost", optimizer="sgd", lr=0.0, noise_multiplier=1.0, max_grad_norm=1.0,
            expected_batch_size=1, seed=0,
        )  # fmt: skip

    state = engine().state()
    cuda_like = {**state, "rng.noise": np.arange(16, dtype=np.uint8)}
    a, b, c = engine(), engine(), engine()
    a.load_state(cuda_like)
    b.load_state(cuda_like)
    c.load_state({**state, "rng.noise": np.arange(1, 17, dtype=np.uint8)})
    na, nb, nc = (e.step([], lr=0.0).private for e in (a, b, c))
    torch.testing.assert_close(na, nb)  # the same checkpoint, the same noise
    assert not torch.allclose(na, nc)  # another checkpoint, other noise


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
@pytest.mark.parametrize("in_a", [[0, 2, 3, 6], [], list(range(8))])
def test_sampling_row_is_the_halves_difference_of_clipped_sums(tiny_model, clipping, in_a):
    """(S_A − S_B)/B̄ against per-example clipped gradients summed by a loop, for any split."""
    model, tok = tiny_model_of(tiny_model)
    C, B = 0.05, 8.0
    batcher = Batcher(model, tok, TextData(TEXTS, LABELS), 32)
    a = np.array(in_a, dtype=int)
    b = np.setdiff1d(np.arange(len(TEXTS)), a)
    chunks_a, chunks_b = batcher.chunks(a, 3), batcher.chunks(b, 3)
    ref_a = brute_force_clipped_sum(model, chunks_a, C)[0] if len(a) else 0.0
    ref_b = brute_force_clipped_sum(model, chunks_b, C)[0] if len(b) else 0.0
    engine = clipping_engine(model, clipping, C, B)
    out = engine.step(chunks_a + chunks_b, lr=0.0, split_at=len(chunks_a))
    np.testing.assert_allclose(out.sampling.double().numpy(), ((ref_a - ref_b) / B).numpy(), atol=1e-9, rtol=1e-5)
    np.testing.assert_allclose(out.clipped.double().numpy(), ((ref_a + ref_b) / B).numpy(), atol=1e-9, rtol=1e-5)
    whole = engine.step(chunks_a + chunks_b, lr=0.0)
    assert whole.sampling is None  # not asked for: no sampling row
    with torch.no_grad():  # the step's loss: the mean cross-entropy over the batch's examples
        ce = [torch.nn.functional.cross_entropy(model(**x).logits, y, reduction="sum") for x, y in chunks_a + chunks_b]
    assert whole.loss == pytest.approx(float(sum(ce)) / len(TEXTS), rel=1e-6)


def test_sampling_stream_has_the_second_moment_of_the_rows_sampling_noise(tiny_model):
    """At a fixed parameter point, Poisson batches redrawn many times: the clipped rows' spread
    (trace of their covariance) equals (1 − q) times the mean ‖Δ‖² of the sampling rows."""
    model, tok = tiny_model_of(tiny_model, "attention-qv", dtype=torch.float32)
    batcher = Batcher(model, tok, TextData(TEXTS, LABELS), 32)
    q, C = 0.5, 0.05
    engine = clipping_engine(model, "bookkeeping", C, q * len(TEXTS))  # one backward pass: 400 steps are cheap
    rng = np.random.default_rng(0)
    rows, deltas = [], []
    for _ in range(400):
        batch = np.flatnonzero(rng.random(len(TEXTS)) < q)
        half = rng.random(len(batch)) < 0.5
        ca, cb = batcher.chunks(batch[half], 16), batcher.chunks(batch[~half], 16)
        out = engine.step(ca + cb, lr=0.0, split_at=len(ca))
        rows.append(out.clipped.double().numpy())
        deltas.append(out.sampling.double().numpy())
    rows, deltas = np.array(rows), np.array(deltas)
    spread = ((rows - rows.mean(0)) ** 2).sum(1).mean()
    second = (deltas**2).sum(1).mean()
    assert spread == pytest.approx((1 - q) * second, rel=0.15)
    # Δ has mean zero: its sample mean is as small as 400 draws of zero-mean noise make it (E = second / 400)
    assert (deltas.mean(0) ** 2).sum() < 3 * second / len(deltas)


def test_a_head_that_misses_the_head_pattern_is_an_error(tiny_model, monkeypatch):
    """A classifier whose head tensors are named outside HEAD_PATTERN would not be stored with the run
    (retraining would start from another head): one clear error instead."""
    import re

    from spectral.dp import models
    from spectral.dp.models import load_model
    from spectral.errors import SpectralError

    model, _ = load_model(str(tiny_model), num_labels=2, seed=0, objective="classifier")
    assert models.head_state(model)  # the stored head: found by the pattern
    monkeypatch.setattr(models, "HEAD_PATTERN", re.compile(r"^head_that_is_not_there\."))
    with pytest.raises(SpectralError, match="classifier head's parameters are not found.*classifier"):
        models.head_state(model)


@pytest.mark.parametrize("params", ["attention-qv", "classifier", "lora"])
@pytest.mark.parametrize("physical", [1, 3, 8])  # 1: no padding; 3 and 8: padded chunks, accumulated over chunks
def test_bookkeeping_clipped_sum_and_norms_equal_a_loop_over_examples(tiny_model, params, physical):
    """One backward pass per chunk (spectral.dp.bookkeeping) against per-example gradients, float64."""
    model, tok = tiny_model_of(tiny_model, params, torch.float64)
    chunks = text_chunks(tok, physical)
    _, norms = brute_force_clipped_sum(model, chunks, C=1e9)
    C = float(np.median(norms))
    expected, _ = brute_force_clipped_sum(model, chunks, C)
    engine = clipping_engine(model, "bookkeeping", C, 5.0)
    out = engine.step(chunks, lr=0.0)
    rel = (out.clipped.double() * 5.0 - expected).norm() / expected.norm()
    assert rel < 1e-6, rel
    np.testing.assert_allclose(out.per_example_norms.double().numpy(), norms, rtol=1e-6)


@pytest.mark.parametrize("T", [None, 2, 9], ids=["one-position", "ghost-identity", "per-example"])
@pytest.mark.parametrize("bias", ["trained", "frozen", "none"])
def test_linear_norms_equal_autograd_per_example(T, bias):
    """Per-example norms of a linear layer's weight and bias from (a, g), against autograd on each example
    alone: one position per example, the ghost identity (T² <= in·out = 12) and the direct per-example
    gradients (T² > 12); a frozen or absent bias has no norm."""
    from spectral.dp.bookkeeping import linear_norms

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3, bias=bias != "none")
    if bias == "frozen":
        layer.bias.requires_grad_(False)
    a = torch.randn(5, 4) if T is None else torch.randn(5, T, 4)
    g = torch.randn(5, 3) if T is None else torch.randn(5, T, 3)  # the output gradients
    got = linear_norms(layer, a, g)
    assert set(got) == {layer.weight} | ({layer.bias} if bias == "trained" else set())
    for b in range(5):
        layer.zero_grad()
        (layer(a[b]) * g[b]).sum().backward()  # d/dW of <W a_b + c, g_b> = g_b a_bᵀ summed over positions
        assert got[layer.weight][b] == pytest.approx(layer.weight.grad.norm().item(), rel=1e-5)
        if bias == "trained":
            assert got[layer.bias][b] == pytest.approx(layer.bias.grad.norm().item(), rel=1e-5)


def test_bookkeeping_refuses_parameters_outside_linear_layers(tiny_model):
    from spectral.errors import SpectralError

    model, _ = tiny_model_of(tiny_model, "all")
    linear = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    bad = [n for n, p in model.named_parameters() if id(p) not in linear]
    assert len(bad) > 4
    with pytest.raises(SpectralError) as info:
        clipping_engine(model, "bookkeeping", 1.0, 5.0)
    assert str(info.value) == (
        f"--clipping bookkeeping needs every trained parameter in an nn.Linear layer; {', '.join(bad[:4])} and "
        f"{len(bad) - 4} more are not (train attention-qv, classifier or lora, or use --clipping ghost)"
    )


@pytest.mark.parametrize("count", [1, 4, 5])
def test_bookkeeping_refusal_names_up_to_four_parameters(count):
    from spectral.dp.bookkeeping import BookkeepingGradSampleModule
    from spectral.errors import SpectralError

    model = torch.nn.Module()
    for i in range(count):
        model.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(2)))
    names = ", ".join(f"p{i}" for i in range(min(count, 4))) + (f" and {count - 4} more" if count > 4 else "")
    with pytest.raises(SpectralError, match=f"nn.Linear layer; {names} are not \\(train"):
        BookkeepingGradSampleModule(model, max_grad_norm=1.0)


def test_bookkeeping_refuses_a_linear_layer_applied_twice():
    """A layer used twice in one forward pass (parameter tying) would need its two (a, g) pairs summed per
    example before the norm: refused at the forward pass, as ghost clipping refuses it."""
    from spectral.dp.bookkeeping import BookkeepingGradSampleModule

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(self.layer(x))

    module = BookkeepingGradSampleModule(Twice(), max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="tying"):
        module(torch.randn(4, 3))


def test_bookkeeping_runs_one_backward_pass_per_chunk(tiny_model, monkeypatch):
    """Ghost clipping calls autograd twice per chunk; book-keeping once."""
    calls = []
    real = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    for clipping, per_chunk in (("ghost", 2), ("bookkeeping", 1)):
        model, tok = tiny_model_of(tiny_model, "attention-qv", torch.float64)
        chunks = text_chunks(tok, 3)
        engine = clipping_engine(model, clipping, 1.0, 5.0)
        calls.clear()
        engine.step(chunks, lr=0.0)
        assert len(calls) == per_chunk * len(chunks), clipping
