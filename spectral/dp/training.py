"""Everything a DP training loop needs, built from one config: data, model, privacy plan, DP engine.

Shared by collect (which stores the gradients), retrain (which restricts them to a subspace) and the
benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..device import CPU
from ..errors import SpectralError
from ..store import open as open_store
from . import probes
from .config import CollectConfig
from .data import TextData, load_split
from .distributed import SINGLE, Group, share_of
from .engine import DPEngine, NonFiniteGradient, trained_weights
from .models import head_state, load_head, load_model, parameter_layout, resolve_model, select_trainable, tokenize
from .privacy import PrivacyPlan, batch_indices, compose_epsilon, half_split, plan_privacy, privacy_history


class Batcher:
    """Tokenises a split once (as ``model`` reads it); builds padded physical chunks for any set of indices."""

    def __init__(self, model, tokenizer, data: TextData, max_length: int):
        self.tokenizer = tokenizer
        self.labels = torch.from_numpy(data.labels)
        self.features = {k: list(v) for k, v in tokenize(model, tokenizer, data.texts, max_length).items()}
        self.lengths = np.array([len(ids) for ids in self.features["input_ids"]])

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self, indices, size: int) -> list:
        """Chunks of at most ``size`` examples; a batch is sorted by length first, so each chunk
        pads to a similar length (the clipped sum over the batch does not depend on the split)."""
        indices = np.asarray(indices)
        indices = indices[np.argsort(self.lengths[indices], kind="stable")]
        out = []
        for start in range(0, len(indices), size):
            idx = indices[start : start + size]
            feats = [{k: v[i] for k, v in self.features.items()} for i in idx]
            inputs = self.tokenizer.pad(feats, return_tensors="pt")
            out.append((dict(inputs), self.labels[idx]))
        return out


def load_init(model: torch.nn.Module, path, model_source: str) -> list:
    """Copy into ``model`` the weights trained by the finished run at ``path`` (and by the runs it
    continued, oldest first); returns the privacy history they spent."""
    prior = open_store(path)
    cfg = prior.manifest.get("config", {})
    if prior.manifest.get("status") != "complete":
        raise SpectralError(f"init-from: {path} is not a finished run (status {prior.manifest.get('status')!r})")
    if prior.manifest.get("model", {}).get("source") != model_source:
        raise SpectralError(
            f"init-from: {path} trained {prior.manifest.get('model', {}).get('source')}, not {model_source}"
        )
    if cfg.get("init_from"):
        load_init(model, cfg["init_from"], model_source)
    elif "head" in prior.manifest.get("attachments", []):  # the chain's first run fixed the head
        load_head(model, prior.attachment("head"))
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trained_weights(prior).items():
            if name not in own or tuple(own[name].shape) != value.shape:
                raise SpectralError(
                    f"init-from: {path} trained {name} {list(value.shape)}, which this model does not have"
                )
            own[name].copy_(torch.from_numpy(np.array(value)))
    return privacy_history(prior)


@dataclass
class Training:
    """Everything a DP training loop needs, built from a :class:`CollectConfig` (see :func:`prepare`)."""

    cfg: CollectConfig
    model: torch.nn.Module
    engine: DPEngine | None
    plan: PrivacyPlan
    layout: list
    d: int
    n_total: int
    pooling: str
    n_train: int
    n_dev: int
    data_info: dict
    train_batches: Batcher
    dev_chunks: list
    head: dict  # the head's tensors at the start (see models.head_state)
    group: Group = SINGLE  # this process's rank in a data-parallel job

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def build_engine(self, project=None, restriction=None) -> DPEngine:
        """A :class:`DPEngine` on this model with the run's settings (optionally restricted to a subspace)."""
        c, p = self.cfg, self.plan
        expected_batch = p.sample_rate * p.n_train if c.sampling == "poisson" else c.batch_size
        return DPEngine(
            self.model,
            clipping=c.clipping,
            optimizer=c.optimizer,
            lr=c.lr,
            noise_multiplier=p.noise_multiplier,
            max_grad_norm=c.max_grad_norm,
            expected_batch_size=expected_batch,
            seed=c.seed,
            project=project,
            restriction=restriction,
            data_parallel=self.group.world_size > 1,
        )

    def chunks(self, step: int) -> list:
        """The physical chunks of logical step ``step`` (deterministic in seed and step): the whole
        batch, or in a data-parallel job this rank's share of it."""
        batch = batch_indices(self.plan, self.cfg.seed, step)
        share = share_of(batch, self.train_batches.lengths, self.group)
        return self.train_batches.chunks(share, self.cfg.physical_batch_size)

    def split_chunks(self, step: int) -> tuple[list, int]:
        """The step's chunks formed within the two random halves of its batch (``sampling`` stream):
        ``(chunks of half A + chunks of half B, number of half A's chunks)``."""
        batch = batch_indices(self.plan, self.cfg.seed, step)
        in_a = half_split(self.plan, self.cfg.seed, step, batch)
        lengths, size = self.train_batches.lengths, self.cfg.physical_batch_size
        a = self.train_batches.chunks(share_of(batch[in_a], lengths, self.group), size)
        b = self.train_batches.chunks(share_of(batch[~in_a], lengths, self.group), size)
        return a + b, len(a)

    def steps(self, engine, start: int = 0, stop: int | None = None, progress: bool = False, desc: str = "steps"):
        """The one DP step loop: yields ``(step, lr, StepOutput, seconds)`` for steps [start, stop) of
        ``engine`` (the run's own or a restricted one) on this run's batches and schedule. Collect,
        retraining and the public subspace consume it; what a step is (batches, halves for the sampling
        stream, dropout seeding in a data-parallel job) is decided here once."""
        from tqdm.auto import tqdm

        from .distributed import seed_dropout

        stop = self.cfg.steps if stop is None else stop
        for step in tqdm(range(start, stop), desc=desc, disable=not progress, leave=False):
            t0, lr = time.perf_counter(), self.cfg.learning_rate(step)
            if self.group.world_size > 1:
                seed_dropout(self.cfg.seed, step, self.group)
            probe_rows = self.probe(engine, step) if self.cfg.probe_batches else {}  # before the update
            chunks, split_at = self.step_chunks(step)
            try:
                out = engine.step(chunks, lr, split_at=split_at) if split_at is not None else engine.step(chunks, lr)
            except NonFiniteGradient as exc:
                exc.step = step  # which step: the caller reports how many are complete
                raise
            if probe_rows:
                out.probes = probe_rows
            yield step, lr, out, time.perf_counter() - t0

    def probe(self, engine, step: int) -> dict:
        """``{"probe<m>": (d,) mean clipped gradient of the first m examples of the step's probe sample}``
        at the current parameters (:mod:`spectral.dp.probes`); the training's RNG is left as it was."""
        sizes = self.cfg.probe_batches
        sample = probes.draw(self.n_train, sizes[-1], self.cfg.seed, step)
        lengths, size = self.train_batches.lengths, self.cfg.physical_batch_size
        segments = [
            self.train_batches.chunks(share_of(part, lengths, self.group), size)
            for part in probes.segments(sample, sizes)
        ]
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(probes.dropout_seed(self.cfg.seed, step, self.group.rank))
            sums = engine.probe_sums(segments)
        return {probes.probe_stream(m): s / m for m, s in zip(sizes, sums)}

    def step_chunks(self, step: int) -> tuple[list, int | None]:
        """``(chunks, split_at)`` for :meth:`DPEngine.step`: split in halves when the ``sampling``
        stream is stored, else the whole batch (``split_at`` None)."""
        if "sampling" in self.cfg.streams:
            return self.split_chunks(step)
        return self.chunks(step), None

    def describe(self) -> str:
        c, p = self.cfg, self.plan
        return (
            f"{c.model} ({c.params}: {self.d:,} of {self.n_total:,} parameters trained), {self.n_train:,} training "
            f"examples, sigma={p.noise_multiplier:.4f}, C={c.max_grad_norm}, q={p.sample_rate:.5f}, "
            f"delta={p.delta:.3g}, {c.clipping} clipping"
            + (
                f", from {c.init_from} (which spent epsilon={compose_epsilon(p.prior, p.delta, p.accountant):.2f})"
                if c.init_from
                else ""
            )
        )


def choose_clipping(model: torch.nn.Module, physical_batch_size: int, device) -> tuple[str, str]:
    """(method, reason) for ``--clipping auto``: the fastest exact method that fits the memory.

    Measured side by side (``bench collect``, MiniLM q/v, 2 CPU cores): book-keeping 1.21x a non-private
    step, per-sample 1.29x, ghost 1.54x; book-keeping also keeps no per-example gradients. So:

    bookkeeping  when every trained parameter sits in an nn.Linear (one backward pass);
    per-sample   otherwise, when the chunk's per-example gradients (and their clipped copies,
                 2 x B_phys x d x 4 bytes) fit in a quarter of the free memory of ``device``;
    ghost        otherwise (two backward passes, any layer Opacus supports, little memory).
    """
    from .bookkeeping import unsupported_parameters

    if not unsupported_parameters(model):
        return "bookkeeping", "every trained layer is linear: one backward pass, no per-example gradients"
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = 2 * physical_batch_size * d * 4
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need <= free / 4:
        return "per-sample", f"not every trained layer is linear; per-example gradients ({need / 2**20:.0f} MiB) fit"
    return "ghost", f"not every trained layer is linear and per-example gradients ({need / 2**20:.0f} MiB) do not fit"


def check_split(cfg: CollectConfig, train, dev, data_info: dict | None):
    """``(train, dev, data_info)`` checked against what ``cfg`` asks of them (the largest probe batch, a dev
    split to evaluate on); ``data_info`` None: the classes of a split given directly."""
    data_info = data_info or {"classes": sorted({int(x) for x in train.labels})}
    if cfg.probe_batches and cfg.probe_batches[-1] > len(train):
        raise SpectralError(
            f"the largest probe batch ({cfg.probe_batches[-1]}) exceeds the {len(train)} training examples"
        )
    if len(dev) == 0 and cfg.eval_every:
        raise SpectralError("the dev split is empty; pass --eval-every 0 to train without evaluation")
    return train, dev, data_info


def prepare(
    cfg: CollectConfig,
    plan: PrivacyPlan | None = None,
    split=None,
    engine: bool = True,
    head: dict | None = None,
    device: torch.device = CPU,
    group: Group = SINGLE,
) -> Training:
    """Load data and model, choose the trainable set, plan privacy and build the DP engine.

    plan : a privacy plan to reuse (on resume); by default planned from ``cfg``
    split : optional ``(train, dev)`` :class:`TextData` to use instead of loading ``cfg.data``
    engine : build the :class:`DPEngine` (False: the caller builds its own, e.g. ``t.build_engine(project, mode)``)
    head : a stored head (:func:`~spectral.dp.models.head_state` of a collect run) to use instead
        of the one ``cfg.seed`` initialises, so that runs derived from a trajectory share its head
    device : where the model and the engine compute, as the stage resolved it
        (:func:`spectral.device.resolve_device`); batches are built on the CPU and moved per physical chunk
    group : this process's rank in a data-parallel job (:func:`spectral.dp.distributed.join`)
    """
    device = torch.device(device)
    train, dev, data_info = check_split(cfg, *(load_split(cfg) if split is None else (*split, None)))
    model, tokenizer = load_model(
        cfg.model, num_labels=len(data_info["classes"]), seed=cfg.seed, pooling=cfg.pooling,
        objective=cfg.objective, label_text=cfg.label_text, template=cfg.template,
    )  # fmt: skip
    n_total, pooling = sum(p.numel() for p in model.parameters()), model.pooling
    if head is not None:
        load_head(model, head)
    prior = load_init(model, cfg.init_from, resolve_model(cfg.model)) if cfg.init_from else []
    head = head_state(model)  # before peft renames the parameters
    model = select_trainable(model, cfg.params, cfg.lora_rank).to(device)
    layout = parameter_layout(model)
    if cfg.clipping == "auto":  # decided once; the manifest stores the method and why
        chosen, why = choose_clipping(model, cfg.physical_batch_size, device)
        cfg = replace(cfg, clipping=chosen)
        model.clipping_reason = f"auto: {chosen}, because {why}"
    if plan is None:
        plan = plan_privacy(
            sampling=cfg.sampling, accountant=cfg.accountant, n_train=len(train), batch_size=cfg.batch_size,
            steps=cfg.steps, max_grad_norm=cfg.max_grad_norm, epsilon=cfg.epsilon, delta=cfg.delta,
            noise_multiplier=cfg.noise_multiplier, prior=prior,
        )  # fmt: skip
    evaluated = cfg.eval_every and group.is_writer  # rank 0 alone evaluates
    dev_chunks = Batcher(model, tokenizer, dev, cfg.max_length).chunks(np.arange(len(dev)), 128) if evaluated else []
    t = Training(cfg, model, None, plan, layout, sum(p["numel"] for p in layout), n_total, pooling, len(train),
                 len(dev), data_info, Batcher(model, tokenizer, train, cfg.max_length), dev_chunks, head, group)  # fmt: skip
    if engine:
        t.engine = t.build_engine()
    return t
