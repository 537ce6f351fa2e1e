"""Book-keeping clipping: per-example norms and the clipped sum from one backward pass.

Opacus' fast gradient clipping runs two backward passes per physical chunk: the first for the
per-example norms (ghost clipping: from the layer inputs a and output gradients g its hooks capture),
the second, on the loss reweighted by the clip factors c_b = min(1, C/‖∇ℓ_b‖), for the clipped sum.
For a linear layer the second pass is not needed (Bu et al., "Differentially private optimization on
large model at small cost", arXiv 2210.00038): with a_b (T, in) and g_b (T, out) of example b,

    ∇_W ℓ_b = Σ_t g_bt a_btᵀ,   ‖∇_W ℓ_b‖² = ⟨a_b a_bᵀ, g_b g_bᵀ⟩ (ghost, T² ≤ in·out) or directly,
    clipped sum Σ_b c_b ∇_W ℓ_b = Σ_b Σ_t (c_b g_bt) a_btᵀ   (one contraction; bias: Σ_b c_b Σ_t g_bt).

So :class:`BookkeepingGradSampleModule` keeps what Opacus' hooks captured, and after the one backward
:class:`BookkeepingLoss` writes the clipped sums into ``.grad``, where Opacus' optimizer (unchanged: noise,
accounting, our subclasses) expects them. Every trainable parameter must sit in an ``nn.Linear`` (the
paper's query/value set, a classifier head, LoRA's A and B); anything else is refused with one clear
error (``--clipping ghost`` handles every layer Opacus supports).
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping, DPTensorFastGradientClipping

from ..errors import SpectralError


def unsupported_parameters(model: torch.nn.Module) -> list[str]:
    """Names of trainable parameters that are not a weight or bias of an ``nn.Linear``."""
    inside = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside]


def linear_norms(layer: torch.nn.Linear, a: torch.Tensor, g: torch.Tensor) -> dict:
    """Per-example gradient norms of ``layer``'s weight and bias from its inputs a (B, [T,] in) and output
    gradients g (B, [T,] out): the ghost identity when T² ≤ in·out, the per-example gradients otherwise."""
    a = a.to(g.dtype)
    out = {}
    if g.dim() == 2:  # one position per example: ‖g aᵀ‖ = ‖g‖ ‖a‖
        if layer.weight.requires_grad:
            out[layer.weight] = (g.pow(2).sum(1) * a.pow(2).sum(1)).sqrt()
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.norm(dim=1)
        return out
    T = g.shape[1]
    if layer.weight.requires_grad:
        if T * T <= layer.in_features * layer.out_features:
            ga = torch.einsum("bst,bst->b", g @ g.transpose(1, 2), a @ a.transpose(1, 2))
            out[layer.weight] = ga.clamp(min=0).sqrt()
        else:
            out[layer.weight] = torch.einsum("bto,bti->boi", g, a).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(1).norm(dim=1)
    return out


class BookkeepingGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus' fast-gradient-clipping module that also keeps each linear layer's (a, g) of the backward
    pass, so :meth:`write_clipped_sums` can form the clipped sum without a second backward."""

    def __init__(self, model: torch.nn.Module, *, max_grad_norm: float):
        bad = unsupported_parameters(model)
        if bad:
            shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            raise SpectralError(
                f"--clipping bookkeeping needs every trained parameter in an nn.Linear layer; {shown} are not "
                "(train attention-qv, classifier or lora, or use --clipping ghost)"
            )
        # ghost clipping's rules hold: a mean loss, and parameter tying refused at the forward pass
        super().__init__(model, max_grad_norm=max_grad_norm, use_ghost_clipping=True, loss_reduction="mean")
        self._kept: list = []

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        if not self.hooks_enabled:
            return
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=forward_output[0].detach(), loss_reduction=loss_reduction, batch_first=batch_first
        )
        for param, norm in linear_norms(module, activations[0], backprops).items():
            param._norm_sample = norm
            param._forward_counter -= 1
        self._kept.append((module, activations[0], backprops))
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len

    @torch.no_grad()
    def write_clipped_sums(self, coeff: torch.Tensor) -> None:
        """``.grad`` of every trained parameter := Σ_b c_b ∇ℓ_b, from the kept (a, g) of each layer."""
        for module, a, g in self._kept:
            gc = g * coeff.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
            if module.weight.requires_grad:
                module.weight.grad = torch.einsum("...o,...i->oi", gc, a.to(g.dtype)).to(module.weight.dtype)
            if module.bias is not None and module.bias.requires_grad:
                module.bias.grad = gc.reshape(-1, gc.shape[-1]).sum(0).to(module.bias.dtype)
        self._kept.clear()


class BookkeepingTensor(DPTensorFastGradientClipping):
    """The loss whose ``backward()`` is one backward pass plus the clipped sums (no second pass)."""

    def backward(self):
        if self.loss_reduction != "mean":  # the engine's only reduction
            raise ValueError(f"loss_reduction = {self.loss_reduction}: book-keeping clipping supports 'mean'")
        # one backward: the hooks keep norms and (a, g) of every linear layer; .grad gets the unclipped sum
        self.loss_per_sample.mean(0).backward()
        self.optimizer.zero_grad()
        self.module.write_clipped_sums(self.module.get_clipping_coef())


class BookkeepingLoss(DPLossFastGradientClipping):
    """Opacus' loss wrapper for fast gradient clipping, returning a :class:`BookkeepingTensor`."""

    def __call__(self, *args, **kwargs) -> BookkeepingTensor:
        loss = super().__call__(*args, **kwargs)
        return BookkeepingTensor(loss.module, loss.optimizer, loss.loss_per_sample, loss.loss_reduction)
