"""The collect loop: data -> model -> DP engine -> trajectory store, resumable at every commit."""

from __future__ import annotations

import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import SpectralError
from ..store import StoreWriter, read_manifest, remove_store
from ..store import open as open_store
from ..store.format import STORAGE_DTYPES, shard_rows_for
from .config import CollectConfig
from .data import TextData, load_data
from .engine import DPEngine, NonFiniteGradient
from .models import head_state, load_head, load_model, parameter_layout, resolve_model, select_trainable, tokenize
from .privacy import PrivacyLedger, PrivacyPlan, batch_indices, compose_epsilon, plan_privacy


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


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing non-empty directory needs --resume or --overwrite."""
    if resume:
        read_manifest(out)  # clear error if there is nothing to resume
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SpectralError(f"{out} exists and is not empty; pass --resume to continue it or --overwrite to replace it")
        remove_store(out)  # refuses a directory that is not a store


def check_disk(out: Path, cfg: CollectConfig, d: int) -> int:
    """Projected bytes of the run; refuse to start when the disk cannot hold them."""
    itemsize = np.dtype(STORAGE_DTYPES[cfg.dtype]).itemsize
    projected = cfg.steps * d * itemsize * len(cfg.streams) + 2 * 3 * d * 4  # rows + two checkpoints
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if projected > free:
        raise SpectralError(
            f"the run needs about {projected / 2**30:.2f} GiB ({cfg.steps} steps x d={d:,} x {itemsize} B x "
            f"{len(cfg.streams)} stream(s)) but only {free / 2**30:.2f} GiB is free at {probe}; "
            "use fewer steps, --dtype float16, or another --out"
        )
    return projected


def load_init(model: torch.nn.Module, path, model_source: str) -> list:
    """Copy into ``model`` the weights trained by the finished run at ``path`` (and by the runs it
    continued, oldest first); returns the privacy history they spent."""
    prior = open_store(path)
    cfg = prior.manifest.get("config", {})
    if prior.manifest.get("status") != "complete":
        raise SpectralError(f"init-from: {path} is not a finished run (status {prior.manifest.get('status')!r})")
    if prior.manifest.get("model", {}).get("source") != model_source:
        raise SpectralError(f"init-from: {path} trained {prior.manifest.get('model', {}).get('source')}, not {model_source}")
    if cfg.get("init_from"):
        load_init(model, cfg["init_from"], model_source)
    elif "head" in prior.manifest.get("attachments", []):  # the chain's first run fixed the head
        load_head(model, prior.attachment("head"))
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in prior.trained_weights().items():
            if name not in own or tuple(own[name].shape) != value.shape:
                raise SpectralError(f"init-from: {path} trained {name} {list(value.shape)}, which this model does not have")
            own[name].copy_(torch.from_numpy(np.array(value)))
    return prior.privacy_history()


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

    def chunks(self, step: int) -> list:
        """The physical chunks of logical step ``step`` (deterministic in seed and step)."""
        return self.train_batches.chunks(batch_indices(self.plan, self.cfg.seed, step), self.cfg.physical_batch_size)

    def describe(self) -> str:
        c, p = self.cfg, self.plan
        return (f"{c.model} ({c.params}: {self.d:,} of {self.n_total:,} parameters trained), {self.n_train:,} training "
                f"examples, sigma={p.noise_multiplier:.4f}, C={c.max_grad_norm}, q={p.sample_rate:.5f}, "
                f"delta={p.delta:.3g}, {c.clipping} clipping"
                + (f", from {c.init_from} (which spent epsilon={compose_epsilon(p.prior, p.delta, p.accountant):.2f})"
                   if c.init_from else ""))


def prepare(cfg: CollectConfig, plan: PrivacyPlan | None = None, split=None, engine: bool = True,
            head: dict | None = None) -> Training:
    """Load data and model, choose the trainable set, plan privacy and build the DP engine.

    plan : a privacy plan to reuse (on resume); by default planned from ``cfg``
    split : optional ``(train, dev)`` :class:`TextData` to use instead of loading ``cfg.data``
    engine : build the :class:`DPEngine` (False: the caller wraps ``model`` in its own engine)
    head : a stored head (:func:`~spectral.collect.models.head_state` of a collect run) to use instead
        of the one ``cfg.seed`` initialises, so that runs derived from a trajectory share its head
    """
    warnings.filterwarnings("ignore", message=".*(full_backward_hook|Using a non-full backward hook).*")
    torch.manual_seed(cfg.seed)
    if split is None:
        train, dev, data_info = load_data(cfg.data, cfg.text_column, cfg.label_column, cfg.seed)
        train, dev = train.head(cfg.train_size), dev.head(cfg.eval_size)
    else:
        (train, dev), data_info = split, {"classes": sorted({int(x) for x in split[0].labels})}
    if len(dev) == 0 and cfg.eval_every:
        raise SpectralError("the dev split is empty; pass --eval-every 0 to train without evaluation")
    model, tokenizer = load_model(cfg.model, num_labels=len(data_info["classes"]), seed=cfg.seed, pooling=cfg.pooling,
                                  objective=cfg.objective, label_text=cfg.label_text, template=cfg.template)
    n_total, pooling = sum(p.numel() for p in model.parameters()), model.pooling
    if head is not None:
        load_head(model, head)
    prior = load_init(model, cfg.init_from, resolve_model(cfg.model)) if cfg.init_from else []
    head = head_state(model)  # before peft renames the parameters
    model = select_trainable(model, cfg.params, cfg.lora_rank)
    layout = parameter_layout(model)
    if plan is None:
        plan = plan_privacy(sampling=cfg.sampling, accountant=cfg.accountant, n_train=len(train),
                            batch_size=cfg.batch_size, steps=cfg.steps, max_grad_norm=cfg.max_grad_norm,
                            epsilon=cfg.epsilon, delta=cfg.delta, noise_multiplier=cfg.noise_multiplier, prior=prior)
    expected_batch = plan.sample_rate * plan.n_train if cfg.sampling == "poisson" else cfg.batch_size
    engine = DPEngine(model, clipping=cfg.clipping, optimizer=cfg.optimizer, lr=cfg.lr,
                      noise_multiplier=plan.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                      expected_batch_size=expected_batch, seed=cfg.seed) if engine else None
    dev_chunks = Batcher(model, tokenizer, dev, cfg.max_length).chunks(np.arange(len(dev)), 128) if cfg.eval_every else []
    return Training(cfg, model, engine, plan, layout, sum(p["numel"] for p in layout), n_total, pooling, len(train), len(dev),
                    data_info, Batcher(model, tokenizer, train, cfg.max_length), dev_chunks, head)


def collect(cfg: CollectConfig, out, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Run (or continue) DP fine-tuning and log every step's gradient to a store at ``out``.

    Returns the store path; open it with :func:`spectral.store.open`.
    """
    out = Path(out)
    prepare_out(out, resume, overwrite)
    manifest = read_manifest(out) if resume else None
    if manifest is not None:
        cfg = CollectConfig.from_dict(manifest["config"])
        if manifest["status"] == "complete":
            print(f"{out}: already complete ({manifest['n_steps']} steps); nothing to resume")
            return out
    cfg.validate()
    if cfg.init_from and manifest is None:
        cfg = replace(cfg, init_from=str(Path(cfg.init_from).expanduser().resolve()))  # named from anywhere
    t = prepare(cfg, plan=PrivacyPlan(**{k: v for k, v in manifest["dp"].items()
                                          if k not in ("sample_rate", "steps_per_epoch")}) if manifest else None)
    model, engine, plan, d = t.model, t.engine, t.plan, t.d
    if manifest is None:
        check_disk(out, cfg, d)

    if manifest is None:
        shard_rows = shard_rows_for(d, cfg.dtype, cfg.shard_mb, cfg.checkpoint_every)
        meta = {
            "code_version": code_version(),
            "config": cfg.to_dict(),
            "model": {"name": cfg.model, "source": resolve_model(cfg.model), "class": type(model).__name__,
                      "n_parameters": t.n_total, "n_trainable": d, "params": cfg.params,
                      "pooling": t.pooling, "objective": t.model.objective},
            "data": {**t.data_info, "n_train_used": t.n_train, "n_dev_used": t.n_dev},
            "dp": plan.to_dict(),
        }
        writer = StoreWriter.create(out, layout=t.layout, streams=cfg.streams, dtype=cfg.dtype,
                                    shard_rows=shard_rows, meta=meta,
                                    attachments={"head": {k: v.numpy() for k, v in t.head.items()}})
        ledger, start = PrivacyLedger(plan), 0
    else:
        writer, checkpoint = StoreWriter.resume(out)
        ledger, start = PrivacyLedger(plan), 0
        if checkpoint is not None:
            engine.load_state(checkpoint.tensors)
            ledger, start = PrivacyLedger(plan, checkpoint.meta["accountant"]), checkpoint.step

    print(f"collect: {t.describe()} -> {out}")

    def commit(status="running"):
        writer.commit(engine.state(), {"accountant": ledger.state(), "epsilon": ledger.epsilon()}, status=status)

    if cfg.eval_every and start == 0:  # the starting point, before any update (step -1)
        writer.log("eval", {"step": -1, **engine.evaluate(t.dev_chunks)})
    bar = tqdm(total=cfg.steps, initial=start, desc="collect", unit="step", disable=not progress)
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            chunks = t.chunks(step)
            lr = cfg.learning_rate(step)
            try:
                res = engine.step(chunks, lr)
            except NonFiniteGradient as exc:
                commit(status="stopped")
                writer.close()
                raise SpectralError(f"step {step}: {exc}; the {step} completed steps are stored in {out}") from None
            ledger.record_step(step)
            epsilon = ledger.epsilon()
            norms = res.per_example_norms
            record = {
                "loss": res.loss, "lr": lr, "epsilon": epsilon,
                "clipped_norm": res.clipped.norm().item(), "private_norm": res.private.norm().item(),
                "frac_clipped": (norms > cfg.max_grad_norm).float().mean().item() if len(norms) else 0.0,
                "mean_example_norm": norms.mean().item() if len(norms) else 0.0,
                "batch_size": res.batch_size, "seconds": time.perf_counter() - t0,
            }
            writer.append(step, {s: getattr(res, s).numpy() for s in cfg.streams}, record)
            last = step + 1 == cfg.steps
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
                writer.log("eval", {"step": step, **engine.evaluate(t.dev_chunks)})
            if (step + 1) % cfg.checkpoint_every == 0 or last:
                commit(status="complete" if last else "running")
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.3f}", eps=f"{epsilon:.2f}")
    except KeyboardInterrupt:
        # the step in flight may be half-applied: keep the last commit, which is consistent
        writer.close(status="interrupted")
        raise SpectralError(f"interrupted; {out} keeps every step up to its last commit; continue with --resume") from None
    finally:
        bar.close()
    writer.close()
    return out
