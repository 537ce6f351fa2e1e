"""DP training in subspace coordinates: θ = θ0 + V z, with only z (r numbers) trained.

The per-example gradient with respect to z is Vᵀ ∇θ ℓ_i. It is clipped to C and the noise
N(0, σ²C² I_r) is added in r dimensions, so the noise energy is r σ²C² instead of d σ²C². The
accounting is that of the unrestricted run (same σ, sampling and steps): only the dimension of the
released vector changes. Per-example gradients come from Opacus' GradSampleModule.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule

from ..dp.engine import StepEngine, flatten, needs_explicit_positions
from .subspace import Subspace


class CoordinateEngine(StepEngine):
    """The ``coordinates`` restriction: same interface as :class:`spectral.dp.engine.DPEngine`; only
    the clipping (of r coordinates) and the update (of z) are its own."""

    def __init__(
        self, model, subspace: Subspace, *, optimizer, lr, noise_multiplier, max_grad_norm, expected_batch_size, seed
    ):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.subspace = subspace.to(self.device)
        self.theta0 = flatten(p.detach() for p in self.params).clone()
        self.dtype = self.params[0].dtype
        self.z = torch.zeros(subspace.rank, dtype=self.dtype, device=self.device, requires_grad=True)
        self.optimizer = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]([self.z], lr=lr)
        self.noise_std = noise_multiplier * max_grad_norm
        self.max_grad_norm, self.expected_batch_size = max_grad_norm, expected_batch_size
        self.noise_generator = torch.Generator(device=self.device).manual_seed(int(seed) + 7919)
        model.train()
        self.module = GradSampleModule(model, loss_reduction="sum")
        self._explicit_positions = needs_explicit_positions(model)
        self._summed = None  # the step's clipped sum in coordinates (r,)

    # ------------------------------------------------------------------ one step (StepEngine's template)
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._summed is None:
            self._summed = torch.zeros(self.subspace.rank, dtype=self.dtype, device=self.device)

    def _accumulate(self, inputs, labels, last: bool):
        """Per-example gradients projected to r coordinates (Vᵀ ∇θ ℓ_i), clipped there and summed."""
        loss = torch.nn.functional.cross_entropy(self.module(**inputs).logits, labels, reduction="sum")
        loss.backward()
        per_example = torch.cat([p.grad_sample.reshape(len(labels), -1) for p in self.params], dim=1)
        Gz = self.subspace.coordinates(per_example).to(self.dtype)  # (B, r)
        norm = Gz.norm(dim=1)
        self._summed += (Gz * (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
        for p in self.params:
            p.grad_sample, p.grad = None, None
        return loss.detach(), norm.detach()

    def _clipped_sum(self) -> torch.Tensor:
        return self._summed

    def _privatise(self, nonempty: bool):
        """The noise N(0, σ²C² I_r) in r dimensions."""
        summed, self._summed = self._summed, None
        noise = torch.normal(
            0.0, self.noise_std, size=summed.shape, generator=self.noise_generator, dtype=self.dtype, device=self.device
        )
        return summed, (summed + noise) / self.expected_batch_size

    def _discard(self) -> None:
        self.optimizer.zero_grad()

    def _apply(self, private: torch.Tensor) -> None:
        self.z.grad = private
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():  # θ = θ0 + V z
            flat = self.theta0 + (self.subspace.V @ self.z.to(self.subspace.V.dtype)).to(self.dtype)
            offset = 0
            for p in self.params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
