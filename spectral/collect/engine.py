"""The DP engine: Opacus per-example clipping (ghost or per-sample) and Gaussian noise.

One call of :meth:`DPEngine.step` is one logical step: the batch is split into physical
chunks whose clipped per-example gradients accumulate (Opacus' skip-step protocol), then
noise ``N(0, (sigma*C)^2)`` is added once and the update applied. The step returns both
streams the store can keep:

``clipped``  sum of clipped per-example gradients / expected batch size (before noise)
``private``  (sum + noise) / expected batch size, the gradient actually applied

so ``private - clipped`` is exactly the noise divided by the expected batch size.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from ..errors import SpectralError


class NonFiniteGradient(SpectralError):
    """A step produced NaN/inf; the update was not applied."""


@dataclass
class StepOutput:
    loss: float
    clipped: torch.Tensor  # (d,) in the parameters' dtype
    private: torch.Tensor  # (d,)
    per_example_norms: torch.Tensor  # (batch,) norms before clipping
    batch_size: int


def _needs_explicit_positions(model) -> bool:
    """BERT-style embeddings broadcast a (1, L) ``position_ids`` buffer over the batch, and
    Opacus cannot split the position table's gradient per example from a batch-1 input. When
    that table is trained we pass (B, L) position ids instead (same values). RoBERTa-style
    embeddings (with ``padding_idx``) already build per-example positions."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    table = getattr(emb, "position_embeddings", None)
    return (
        isinstance(table, torch.nn.Embedding)
        and table.weight.requires_grad
        and not hasattr(emb, "padding_idx")
        and "position_ids" in inspect.signature(model.forward).parameters
    )


def add_position_ids(inputs: dict) -> dict:
    """``inputs`` with explicit (B, L) position ids (see :func:`_needs_explicit_positions`)."""
    batch, length = inputs["input_ids"].shape
    return {**inputs, "position_ids": torch.arange(length).repeat(batch, 1)}


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@torch.no_grad()
def evaluate(model, chunks) -> dict:
    """Mean loss and accuracy of ``model`` over ``chunks`` with dropout off."""
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    try:
        for inputs, labels in chunks:
            logits = model(**inputs).logits
            total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            n += len(labels)
    finally:
        model.train()
    return {"loss": total_loss / n, "accuracy": correct / n, "n": n}


class DPEngine:
    """DP-SGD / DP-Adam on the trainable parameters of ``model``.

    Parameters
    ----------
    model : nn.Module whose trainable parameters are the ones to privatise; it is called
        as ``model(**inputs).logits``.
    clipping : "ghost" (per-example norms without per-example gradients, two backward
        passes) or "per-sample" (materialised per-example gradients).
    noise_multiplier, max_grad_norm : sigma and C; the noise std is sigma * C.
    expected_batch_size : the divisor of the summed gradient (q * n for Poisson sampling).
    seed : seeds the noise generator (saved and restored with :meth:`state`).
    """

    def __init__(self, model, *, clipping, optimizer, lr, noise_multiplier, max_grad_norm, expected_batch_size, seed):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clipping = clipping
        self.noise_generator = torch.Generator().manual_seed(int(seed) + 7919)
        base = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer](self.params, lr=lr)
        kwargs = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                      expected_batch_size=expected_batch_size, loss_reduction="mean", generator=self.noise_generator)
        model.train()  # ghost clipping's hooks only run in training mode
        if clipping == "ghost":
            self.module = GradSampleModuleFastGradientClipping(
                model, max_grad_norm=max_grad_norm, use_ghost_clipping=True, loss_reduction="mean")
            self.optimizer = DPOptimizerFastGradientClipping(base, **kwargs)
            self.criterion = DPLossFastGradientClipping(
                self.module, self.optimizer, torch.nn.CrossEntropyLoss(reduction="mean"), "mean")
        elif clipping == "per-sample":
            self.module = GradSampleModule(model, loss_reduction="mean")
            self.optimizer = DPOptimizer(base, **kwargs)
            self.criterion = torch.nn.CrossEntropyLoss(reduction="mean")
        else:
            raise SpectralError(f"unknown clipping mode {clipping!r}")
        self.expected_batch_size = expected_batch_size
        self._explicit_positions = _needs_explicit_positions(model)
        self._project, self._restriction = None, None

    # ------------------------------------------------------------------ subspace restriction
    RESTRICTIONS = ("signal", "signal+noise")

    def restrict(self, project, mode: str) -> None:
        """Restrict updates to a subspace; ``project`` maps a flat (d,) gradient to its projection.

        ``signal``: project the summed clipped gradient, then add full-dimensional noise
        (the seed code's retraining). ``signal+noise``: project the noised gradient (PDP-SGD
        style), so the noise energy falls from d to r dimensions. Privacy is unchanged either
        way: projection is post-processing of the clipped sum or of the released gradient.
        """
        if mode not in self.RESTRICTIONS:
            raise SpectralError(f"unknown restriction {mode!r}; choose from {', '.join(self.RESTRICTIONS)}")
        self._project, self._restriction = project, mode
        if mode == "signal":  # between clipping and noise, on both of step()'s paths
            add_noise = self.optimizer.add_noise

            def project_then_add_noise():
                self._project_in_place([p.summed_grad for p in self.params])
                add_noise()

            self.optimizer.add_noise = project_then_add_noise

    def _project_in_place(self, tensors) -> None:
        flat = self._project(_flat(tensors))
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    # ------------------------------------------------------------------ one step
    def _per_example_norms(self) -> torch.Tensor:
        if self.clipping == "ghost":
            return self.module.per_sample_gradient_norms.detach()
        per_param = [g.reshape(len(g), -1).norm(dim=1) for g in self.optimizer.grad_samples]
        return torch.stack(per_param, dim=1).norm(dim=1)

    def step(self, chunks, lr: float) -> StepOutput:
        """One DP update from ``chunks``: a list of ``(inputs: dict of tensors, labels)``.

        Raises :class:`NonFiniteGradient` (before applying anything) if the result is not finite.
        """
        opt = self.optimizer
        for group in opt.param_groups:
            group["lr"] = lr
        losses, norms, n = [], [], 0
        for i, (inputs, labels) in enumerate(chunks):
            if self._explicit_positions:
                inputs = add_position_ids(inputs)
            logits = self.module(**inputs).logits
            loss = self.criterion(logits, labels)
            loss.backward()
            losses.append(loss.item() * len(labels))
            norms.append(self._per_example_norms())
            n += len(labels)
            if i < len(chunks) - 1:
                opt.signal_skip_step(True)  # clip and accumulate only
                opt.step()
                opt.zero_grad()
        if chunks:
            opt.pre_step()  # clip, accumulate, add noise, divide by the expected batch size
        else:  # an empty Poisson batch still releases pure noise
            for p in self.params:
                p.summed_grad = torch.zeros_like(p)
            opt.add_noise()
            for p in self.params:
                p.grad /= self.expected_batch_size
        if self._restriction == "signal+noise":
            self._project_in_place([p.grad for p in self.params])
        clipped = _flat(p.summed_grad for p in self.params) / self.expected_batch_size
        private = _flat(p.grad for p in self.params)
        if not (torch.isfinite(clipped).all() and torch.isfinite(private).all()):
            opt.zero_grad()
            raise NonFiniteGradient("the gradient became non-finite (NaN or inf); stopped before applying it")
        opt.original_optimizer.step()
        opt.zero_grad()
        return StepOutput(
            loss=sum(losses) / n if n else math.nan,
            clipped=clipped,
            private=private,
            per_example_norms=torch.cat(norms) if norms else torch.zeros(0),
            batch_size=n,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, chunks) -> dict:
        """Mean loss and accuracy over ``chunks`` with dropout off."""
        return evaluate(self.model, chunks)

    # ------------------------------------------------------------------ checkpointing
    def state(self) -> dict:
        """Arrays needed to continue exactly: trainable weights, optimizer moments, RNG states."""
        tensors = {f"param.{i}": p.detach().numpy().copy() for i, p in enumerate(self.params)}
        for i, st in self.optimizer.original_optimizer.state_dict()["state"].items():
            for key, value in st.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().numpy().copy()
        tensors["rng.torch"] = torch.get_rng_state().numpy().copy()
        tensors["rng.noise"] = self.noise_generator.get_state().numpy().copy()
        return tensors

    def load_state(self, tensors: dict) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(torch.from_numpy(tensors[f"param.{i}"]))
        inner = self.optimizer.original_optimizer
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = torch.from_numpy(np.array(value))
        inner.load_state_dict({"state": state, "param_groups": inner.state_dict()["param_groups"]})
        torch.set_rng_state(torch.from_numpy(np.array(tensors["rng.torch"])))
        self.noise_generator.set_state(torch.from_numpy(np.array(tensors["rng.noise"])))
