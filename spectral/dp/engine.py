"""The DP engine: Opacus per-example clipping (a method of :data:`CLIPPINGS`) and Gaussian noise.

:class:`StepEngine` is the step as a template; :class:`DPEngine` fills it in parameter space. One call of
:meth:`StepEngine.step` is one logical step: the batch is split into physical
chunks whose clipped per-example gradients accumulate (Opacus' skip-step protocol), then
noise ``N(0, (sigma*C)^2)`` is added once and the update applied. The step returns both
streams the store can keep:

``clipped``  sum of clipped per-example gradients / expected batch size (before noise)
``private``  (sum + noise) / expected batch size, the gradient actually applied

so ``private - clipped`` is exactly the noise divided by the expected batch size.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from ..errors import SpectralError
from .bookkeeping import BookkeepingGradSampleModule, BookkeepingLoss
from .distributed import data_parallel_class, gather_over_ranks, sum_over_ranks, sum_over_ranks_tensor
from .sampling import sampling_row

CE = torch.nn.CrossEntropyLoss(reduction="mean")


class NonFiniteGradient(SpectralError):
    """A step produced NaN/inf; the update was not applied."""


@dataclass
class StepOutput:
    loss: float
    clipped: torch.Tensor  # (d,) in the parameters' dtype
    private: torch.Tensor  # (d,)
    per_example_norms: torch.Tensor  # (batch,) norms before clipping
    batch_size: int
    # (d,) the halves' difference (S_A − S_B)/B̄ when the step was asked for it (spectral.dp.sampling)
    sampling: torch.Tensor | None = None
    # host numbers of the step, from one device-to-host copy: clipped_norm, private_norm,
    # frac_clipped, mean_example_norm, peak (the largest |value| of either row)
    stats: dict = field(default_factory=dict)
    # {"probe<m>": (d,) mean clipped gradient of the first m probe examples} (spectral.dp.probes)
    probes: dict = field(default_factory=dict)

    def row(self, stream: str) -> torch.Tensor:
        """The (d,) row of ``stream`` (clipped, private, sampling or a probe stream)."""
        return self.probes[stream] if stream in self.probes else getattr(self, stream)


def needs_explicit_positions(model) -> bool:
    """BERT-style embeddings broadcast a (1, L) ``position_ids`` buffer over the batch, and
    Opacus cannot split the position table's gradient per example from a batch-1 input. When
    that table is trained we pass (B, L) position ids instead (same values). GPT-2 does the same with
    its ``wpe`` table. RoBERTa-style embeddings (with ``padding_idx``) already build per-example positions."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    table = getattr(emb, "position_embeddings", None) or getattr(base, "wpe", None)
    return (
        isinstance(table, torch.nn.Embedding)
        and table.weight.requires_grad
        and not hasattr(emb, "padding_idx")
        and "position_ids" in inspect.signature(model.forward).parameters
    )


def add_position_ids(inputs: dict) -> dict:
    """``inputs`` with explicit (B, L) position ids (see :func:`needs_explicit_positions`)."""
    ids = inputs["input_ids"]
    batch, length = ids.shape
    return {**inputs, "position_ids": torch.arange(length, device=ids.device).repeat(batch, 1)}


def to_device(inputs: dict, labels: torch.Tensor, device) -> tuple[dict, torch.Tensor]:
    """A physical chunk on ``device`` (a no-op on the CPU)."""
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}, labels.to(device, non_blocking=True)


def flatten(tensors) -> torch.Tensor:
    """One flat vector of ``tensors``, in order (the store's row layout)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def project_in_place(project, tensors) -> None:
    """Replace ``tensors`` (one flat vector, split) by ``project(flatten(tensors))``."""
    flat = project(flatten(tensors))
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


class _ProjectBeforeNoise:
    """Opacus optimizer mixin: the summed clipped gradient is projected, then the noise is added (the
    seed code's ``signal`` retraining). Privacy is unchanged: projection is post-processing of the sum."""

    project = None  # (d,) -> (d,)

    def add_noise(self):
        project_in_place(self.project, [p.summed_grad for p in self.params])
        super().add_noise()


class SignalProjectedDPOptimizer(_ProjectBeforeNoise, DPOptimizer):
    """:class:`opacus.optimizers.DPOptimizer` restricted to a subspace before the noise."""


class SignalProjectedDPOptimizerFastGradientClipping(_ProjectBeforeNoise, DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer restricted to a subspace before the noise."""


@torch.no_grad()
def evaluate(model, chunks) -> dict:
    """Mean loss and accuracy of ``model`` over ``chunks`` with dropout off."""
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, n = 0.0, 0, 0
    try:
        for inputs, labels in chunks:
            inputs, labels = to_device(inputs, labels, device)
            logits = model(**inputs).logits
            total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            n += len(labels)
    finally:
        model.train()
    return {"loss": total_loss / n, "accuracy": correct / n, "n": n}


class StepEngine:
    """One DP step as a template (as Opacus' DPOptimizer splits its step): this class owns the learning rate,
    the chunk loop, the half-batch capture, the stats, the non-finite check and the step's output; a variant
    (:class:`DPEngine`: parameter space; :class:`spectral.retrain.coordinates.CoordinateEngine`: subspace
    coordinates) implements only what differs:

    ``_set_lr(lr)``                        the optimizer's learning rate
    ``_accumulate(inputs, labels, last)``  forward and backward of one chunk, its clipped gradients added
                                           to the step's sum; returns (summed loss, per-example norms)
    ``_clipped_sum()``                     the (d,) sum of clipped per-example gradients so far
    ``_privatise(nonempty)``               ``(summed, private)``: the whole sum and the noised gradient
    ``_discard()``                         forget the step (non-finite result)
    ``_apply(private)``                    the update
    A subclass sets ``model``, ``device``, ``max_grad_norm``, ``expected_batch_size`` and
    ``_explicit_positions``; ``data_parallel`` (default False) sums the step over ranks.
    """

    data_parallel = False

    def step(self, chunks, lr: float, split_at: int | None = None) -> StepOutput:
        """One DP update from ``chunks``: a list of ``(inputs: dict of tensors, labels)``.

        ``split_at``: the first ``split_at`` chunks are half A of the batch, the rest half B; the
        output then carries the ``sampling`` row (S_A − S_B)/B̄ (:mod:`spectral.dp.sampling`).
        Raises :class:`NonFiniteGradient` (before applying anything) if the result is not finite.
        """
        self._set_lr(lr)
        losses, norms, n, half_a = [], [], 0, None
        for i, (inputs, labels) in enumerate(self._on_device(chunks)):
            loss, norm = self._accumulate(inputs, labels, last=i == len(chunks) - 1)
            losses.append(loss)
            norms.append(norm)
            n += len(labels)
            if split_at is not None and i == split_at - 1 and i < len(chunks) - 1:  # half A is in the sum now
                half_a = self._clipped_sum().clone()
        summed, private = self._privatise(bool(chunks))
        clipped = summed / self.expected_batch_size
        sampling = None
        if split_at is not None:
            # half A empty: zeros; half B empty: half A is the whole batch
            half_a = torch.zeros_like(summed) if split_at == 0 else summed if half_a is None else half_a
            if self.data_parallel:
                half_a = sum_over_ranks_tensor(half_a)
            sampling = sampling_row(half_a, summed, self.expected_batch_size)
        norms = torch.cat(norms) if norms else torch.zeros(0, device=self.device)
        stats = self._step_stats(clipped, private, norms, losses)  # the step's one host copy
        if not stats.pop("finite"):
            self._discard()
            raise NonFiniteGradient("the gradient became non-finite (NaN or inf); stopped before applying it")
        self._apply(private)
        loss = stats.pop("loss_sum")
        if self.data_parallel:  # report the logical batch, not this rank's share
            norms = gather_over_ranks(norms)
            loss, n = sum_over_ranks([loss, n])
            n = int(n)
            stats.update(self._norm_stats(norms))
        return StepOutput(loss=loss / n if n else math.nan, clipped=clipped, private=private,
                          per_example_norms=norms, batch_size=n, sampling=sampling, stats=stats)  # fmt: skip

    def _on_device(self, chunks):
        """``(inputs, labels)`` of each chunk on the engine's device, with explicit positions if needed."""
        for inputs, labels in chunks:
            inputs, labels = to_device(inputs, labels, self.device)
            yield (add_position_ids(inputs) if self._explicit_positions else inputs), labels

    def _norm_stats(self, norms: torch.Tensor) -> dict:
        if not len(norms):
            return {"frac_clipped": 0.0, "mean_example_norm": 0.0}
        C = self.max_grad_norm
        values = torch.stack([(norms > C).double().mean(), norms.double().mean()]).tolist()
        return dict(zip(("frac_clipped", "mean_example_norm"), values))

    def _step_stats(self, clipped, private, norms, losses) -> dict:
        """Everything the host needs to know about a step, in one small device-to-host copy."""
        zero = torch.zeros((), dtype=torch.float64, device=clipped.device)
        C = self.max_grad_norm
        parts = {
            "finite": (torch.isfinite(clipped).all() & torch.isfinite(private).all()).double(),
            "loss_sum": torch.stack(losses).sum().double() if losses else zero,
            "clipped_norm": clipped.double().norm(),
            "private_norm": private.double().norm(),
            "frac_clipped": (norms > C).double().mean() if len(norms) else zero,
            "mean_example_norm": norms.double().mean() if len(norms) else zero,
            "peak": torch.maximum(clipped.abs().max(), private.abs().max()).double() if clipped.numel() else zero,
        }
        out = dict(zip(parts, torch.stack(list(parts.values())).tolist()))
        out["finite"] = bool(out["finite"])
        return out

    def evaluate(self, chunks) -> dict:
        """Mean loss and accuracy over ``chunks`` with dropout off."""
        return evaluate(self.model, chunks)


@dataclass(frozen=True)
class Clipping:
    """How one clipping method computes per-example norms and the clipped sum: the model wrapper, the Opacus
    optimizer (``restricted``: its subclass that projects before the noise), the criterion and the norms."""

    wrap: Callable  # (model, max_grad_norm) -> module
    optimizer: type
    restricted: type
    criterion: Callable  # (module, optimizer) -> loss function of (logits, labels)
    norms: Callable  # (module, optimizer) -> (B,) per-example norms of the chunk just backpropagated


def _fast_norms(module, optimizer) -> torch.Tensor:
    return module.per_sample_gradient_norms.detach()


def _materialised_norms(module, optimizer) -> torch.Tensor:
    per_param = [g.reshape(len(g), -1).norm(dim=1) for g in optimizer.grad_samples]
    return torch.stack(per_param, dim=1).norm(dim=1)


CLIPPINGS = {
    # two backward passes, per-example norms without per-example gradients (Opacus' ghost clipping)
    "ghost": Clipping(
        wrap=lambda model, C: GradSampleModuleFastGradientClipping(
            model, max_grad_norm=C, use_ghost_clipping=True, loss_reduction="mean"
        ),
        optimizer=DPOptimizerFastGradientClipping,
        restricted=SignalProjectedDPOptimizerFastGradientClipping,
        criterion=lambda module, opt: DPLossFastGradientClipping(module, opt, CE, "mean"),
        norms=_fast_norms,
    ),
    # one backward pass: the clipped sum from what the hooks captured (spectral.dp.bookkeeping)
    "bookkeeping": Clipping(
        wrap=lambda model, C: BookkeepingGradSampleModule(model, max_grad_norm=C),
        optimizer=DPOptimizerFastGradientClipping,
        restricted=SignalProjectedDPOptimizerFastGradientClipping,
        criterion=lambda module, opt: BookkeepingLoss(module, opt, CE, "mean"),
        norms=_fast_norms,
    ),
    # materialised per-example gradients (Opacus' GradSampleModule)
    "per-sample": Clipping(
        wrap=lambda model, C: GradSampleModule(model, loss_reduction="mean"),
        optimizer=DPOptimizer,
        restricted=SignalProjectedDPOptimizer,
        criterion=lambda module, opt: CE,
        norms=_materialised_norms,
    ),
}


class DPEngine(StepEngine):
    """DP-SGD / DP-Adam on the trainable parameters of ``model``.

    Parameters
    ----------
    model : nn.Module whose trainable parameters are the ones to privatise; it is called
        as ``model(**inputs).logits``.
    clipping : a name in :data:`CLIPPINGS`: "ghost" (per-example norms without per-example gradients, two
        backward passes), "bookkeeping" (one backward pass, linear layers) or "per-sample" (materialised
        per-example gradients).
    noise_multiplier, max_grad_norm : sigma and C; the noise std is sigma * C.
    expected_batch_size : the divisor of the summed gradient (q * n for Poisson sampling).
    seed : seeds the noise generator (saved and restored with :meth:`state`).
    project, restriction : restrict updates to a subspace; ``project`` maps a flat (d,) gradient to
        its projection. ``signal``: project the summed clipped gradient, then add full-dimensional
        noise (the seed code's retraining). ``signal+noise``: project the noised gradient (PDP-SGD
        style), so the noise energy falls from d to r dimensions. Privacy is unchanged either way.
    """

    RESTRICTIONS = ("signal", "signal+noise")

    def __init__(
        self,
        model,
        *,
        clipping,
        optimizer,
        lr,
        noise_multiplier,
        max_grad_norm,
        expected_batch_size,
        seed,
        project=None,
        restriction=None,
        data_parallel: bool = False,
    ):
        if (project is None) != (restriction is None) or restriction not in (None, *self.RESTRICTIONS):
            raise SpectralError(f"a restriction needs a projection and a mode from {', '.join(self.RESTRICTIONS)}")
        if clipping not in CLIPPINGS:
            raise SpectralError(f"unknown clipping mode {clipping!r}")
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.clipping, method = clipping, CLIPPINGS[clipping]
        # on the parameters' device, so the noise is drawn where it is added
        self.noise_generator = torch.Generator(device=self.device).manual_seed(int(seed) + 7919)
        base = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer](self.params, lr=lr)
        model.train()  # ghost clipping's hooks only run in training mode
        self.module = method.wrap(model, max_grad_norm)
        parallel = data_parallel_class if data_parallel else (lambda cls: cls)
        self.optimizer = parallel(method.restricted if restriction == "signal" else method.optimizer)(
            base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean", generator=self.noise_generator,
        )  # fmt: skip
        self.criterion = method.criterion(self.module, self.optimizer)
        self._norms = method.norms
        self.expected_batch_size, self.max_grad_norm = expected_batch_size, max_grad_norm
        self.optimizer.project = project
        self._project, self._restriction = project, restriction
        self._explicit_positions = needs_explicit_positions(model)
        self.data_parallel = data_parallel

    # ------------------------------------------------------------------ one step (StepEngine's template)
    def _per_example_norms(self) -> torch.Tensor:
        return self._norms(self.module, self.optimizer)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _accumulate(self, inputs, labels, last: bool):
        loss = self.criterion(self.module(**inputs).logits, labels)
        loss.backward()
        norms = self._per_example_norms()
        if not last:  # the last chunk is clipped and summed by pre_step, with the noise
            self.optimizer.signal_skip_step(True)  # clip and accumulate only
            self.optimizer.step()
            self.optimizer.zero_grad()
        return loss.detach() * len(labels), norms  # summed on the device: no sync per chunk

    def _clipped_sum(self) -> torch.Tensor:
        return flatten(p.summed_grad for p in self.params)

    def _privatise(self, nonempty: bool):
        opt = self.optimizer
        if nonempty:
            opt.pre_step()  # clip, accumulate, add noise, divide by the expected batch size
        else:  # an empty Poisson batch still releases pure noise
            for p in self.params:
                p.summed_grad = torch.zeros_like(p)
            opt.add_noise()
            for p in self.params:
                p.grad /= self.expected_batch_size
        if self._restriction == "signal+noise":
            project_in_place(self._project, [p.grad for p in self.params])
        return self._clipped_sum(), flatten(p.grad for p in self.params)

    def _discard(self) -> None:
        self.optimizer.zero_grad()

    def _apply(self, private: torch.Tensor) -> None:
        self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad()

    def probe_sums(self, segments) -> list[torch.Tensor]:
        """Clipped sums of nested prefixes, parameters untouched: ``segments`` is a list of chunk lists;
        returns, after each segment, the (d,) sum of clipped per-example gradients of every chunk so far
        (over all ranks in a data-parallel job). The run's clipping method, no noise, no update, no
        optimizer state kept (:mod:`spectral.dp.probes`)."""
        opt, sums = self.optimizer, []
        for chunks in segments:
            for inputs, labels in self._on_device(chunks):
                self.criterion(self.module(**inputs).logits, labels).backward()
                opt.signal_skip_step(True)  # clip and accumulate only
                opt.step()
                opt.zero_grad()
            total = flatten(
                torch.zeros_like(p) if getattr(p, "summed_grad", None) is None else p.summed_grad for p in self.params
            )
            sums.append(sum_over_ranks_tensor(total) if self.data_parallel else total.clone())
        for p in self.params:  # the step that follows starts its own sum
            p.summed_grad = None
        return sums

    # ------------------------------------------------------------------ checkpointing
    def state(self) -> dict:
        """Arrays needed to continue exactly: trainable weights, optimizer moments, RNG states."""
        tensors = {f"param.{i}": p.detach().cpu().numpy().copy() for i, p in enumerate(self.params)}
        for i, st in self.optimizer.original_optimizer.state_dict()["state"].items():
            for key, value in st.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
        tensors["rng.torch"] = torch.get_rng_state().numpy().copy()
        tensors["rng.noise"] = self.noise_generator.get_state().numpy().copy()
        if self.device.type == "cuda":  # dropout draws from the device's generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
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
        noise_state = torch.from_numpy(np.array(tensors["rng.noise"]))
        if len(noise_state) == len(self.noise_generator.get_state()):
            self.noise_generator.set_state(noise_state)
        else:  # saved on another device type (CPU Mersenne Twister vs CUDA Philox): states do not transfer,
            # so the noise continues from a fresh stream seeded by the saved state (deterministic, still secret)
            digest = hashlib.sha256(noise_state.numpy().tobytes()).digest()
            self.noise_generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(torch.from_numpy(np.array(tensors["rng.cuda"])), self.device)


def trained_weights(store) -> dict:
    """The trained parameters after a store's last commit, ``{name: array of its shape}`` (the
    checkpoint holds :meth:`DPEngine.state`, parameters in the store's layout order)."""
    tensors = store.checkpoint.tensors
    return {p.name: tensors[f"param.{i}"].reshape(p.shape) for i, p in enumerate(store.layout)}
