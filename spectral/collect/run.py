"""The collect loop: data -> model -> DP engine -> trajectory store, resumable at every commit."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from ..device import resolve_device
from ..dp.config import CollectConfig
from ..dp.distributed import join, leave, share
from ..dp.engine import NonFiniteGradient
from ..dp.models import resolve_model
from ..dp.privacy import PrivacyLedger, PrivacyPlan
from ..dp.training import Training, prepare
from ..errors import SpectralError
from ..store import StoreWriter, read_manifest, remove_store
from ..store.format import STORAGE_DTYPES, shard_rows_for, storage_overflow


def code_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix runs: an existing non-empty directory needs --resume or --overwrite."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SpectralError(
                f"{out} exists and is not empty; pass --resume to continue it or --overwrite to replace it"
            )
        remove_store(out)  # refuses a directory that is not a store


def check_disk(out: Path, cfg: CollectConfig, d: int) -> int:
    """Projected bytes of the run; refuse to start when the disk cannot hold them."""
    itemsize = np.dtype(STORAGE_DTYPES[cfg.dtype]).itemsize
    n_streams = len(cfg.stored_streams)
    projected = cfg.steps * d * itemsize * n_streams + 2 * 3 * d * 4  # rows + two checkpoints
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if projected > free:
        raise SpectralError(
            f"the run needs about {projected / 2**30:.2f} GiB ({cfg.steps} steps x d={d:,} x {itemsize} B x "
            f"{n_streams} stream(s)) but only {free / 2**30:.2f} GiB is free at {probe}; "
            "use fewer steps, --dtype float16, or another --out"
        )
    return projected


class HostRows:
    """Device rows copied to the host for the store writer without stalling the training loop.

    On a GPU each row goes into a pinned host buffer by an asynchronous copy; the writer thread
    waits for the copy's event before it reads the buffer. Buffers are reused round-robin, more of
    them than the writer's queue can hold, so none is overwritten before it is written out. On the
    CPU a row is handed over as it is.
    """

    def __init__(self, device: torch.device, streams: list, d: int, slots: int):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.buffers = [{s: torch.empty(d, pin_memory=True) for s in streams} for _ in range(slots)]
            self.next = 0

    def __call__(self, rows: dict) -> tuple[dict, object]:
        """``(numpy rows, ready)`` for :meth:`StoreWriter.append`."""
        if not self.cuda:
            return {s: t.detach().numpy() for s, t in rows.items()}, None
        buffers = self.buffers[self.next % len(self.buffers)]
        self.next += 1
        for s, t in rows.items():
            buffers[s].copy_(t.detach().float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return {s: b.numpy() for s, b in buffers.items()}, event.synchronize


def run_metadata(t: Training) -> dict:
    """What the manifest records about a new run besides its rows."""
    cfg = t.cfg
    return {
        "code_version": code_version(),
        "config": cfg.to_dict(),
        "model": {
            "name": cfg.model,
            "source": resolve_model(cfg.model),
            "class": type(t.model).__name__,
            "n_parameters": t.n_total,
            "n_trainable": t.d,
            "params": cfg.params,
            "pooling": t.pooling,
            "objective": t.model.objective,
        },
        "data": {**t.data_info, "n_train_used": t.n_train, "n_dev_used": t.n_dev},
        "dp": t.plan.to_dict(),
        "clipping": {"method": cfg.clipping, "reason": getattr(t.model, "clipping_reason", "requested")},
        "threads": torch.get_num_threads(),  # --threads, or the free cores at the start (spectral.cli.free_cores)
        **(
            {
                "probes": {
                    "batch_sizes": cfg.probe_batches,
                    "streams": cfg.stored_streams[len(cfg.streams) :],
                    "privacy": "a measurement of private data, not a DP release: no noise is added to probe rows "
                    "and they are outside the privacy accounting (spectral.dp.probes)",
                }
            }
            if cfg.probe_batches
            else {}
        ),
        "world_size": t.group.world_size,  # ranks of the launch that created the run; each launch: table "launches"
    }


def open_writer(t: Training, out: Path, resumed: bool) -> tuple[StoreWriter, PrivacyLedger, int]:
    """``(writer, privacy ledger, first step)``: a new store, or the resumed one with the engine,
    ledger and step restored from its last checkpoint."""
    if not resumed:
        check_disk(out, t.cfg, t.d)
        writer = StoreWriter.create(
            out,
            layout=t.layout,
            streams=t.cfg.stored_streams,
            dtype=t.cfg.dtype,
            shard_rows=shard_rows_for(t.d, t.cfg.dtype, t.cfg.shard_mb, t.cfg.checkpoint_every),
            meta=run_metadata(t),
            attachments={"head": {k: v.numpy() for k, v in t.head.items()}},
        )
        return writer, PrivacyLedger(t.plan), 0
    writer, checkpoint = StoreWriter.resume(out)
    if checkpoint is None:
        return writer, PrivacyLedger(t.plan), 0
    t.engine.load_state(checkpoint.tensors)
    return writer, PrivacyLedger(t.plan, checkpoint.meta["accountant"]), checkpoint.step


def step_record(res, lr: float, epsilon: float, seconds: float) -> dict:
    """The steps-table row of one DP step (its numbers came to the host in the engine's one copy)."""
    keys = ("clipped_norm", "private_norm", "frac_clipped", "mean_example_norm")
    return {
        "loss": res.loss,
        "lr": lr,
        "epsilon": epsilon,
        **{k: res.stats[k] for k in keys},
        "batch_size": res.batch_size,
        "seconds": seconds,
    }


def settings_that_differ(manifest: dict, requested: dict) -> dict:
    """The ``requested`` settings a stored run does not have, ``{name: requested value}``. ``clipping="auto"``
    matches the method auto chose for the run (the manifest stores the choice, and the reason "auto: ...")."""
    from ..dp.config import parse_probe_batches

    stored = manifest.get("config", {})
    chose_auto = str(manifest.get("clipping", {}).get("reason", "")).startswith("auto")
    same = {  # requested spellings of a stored value
        "clipping": lambda v: v == "auto" and chose_auto,
        "probe_batches": lambda v: v is not None and parse_probe_batches(v) == stored.get("probe_batches"),
    }
    return {k: v for k, v in requested.items() if stored.get(k) != v and not same.get(k, lambda _: False)(v)}


def run_settings(cfg: CollectConfig | None, out: Path, resume: bool, overwrite: bool, requested: dict) -> dict:
    """What the run does, decided once from ``out`` (on rank 0 alone in a data-parallel job):
    ``{"cfg", "plan", "resumed"}``, or ``{"done": message}`` when a resumed run is already complete.
    A resumed run keeps its stored settings: a ``requested`` one that differs would silently mix two runs."""
    if resume and overwrite:
        raise SpectralError("--resume and --overwrite exclude each other")
    if not resume:
        prepare_out(out, overwrite)
        if cfg.init_from:  # named from anywhere, stored absolute
            cfg = replace(cfg, init_from=str(Path(cfg.init_from).expanduser().resolve()))
        return {"cfg": cfg, "plan": None, "resumed": False}
    manifest = read_manifest(out)  # one clear error if there is nothing to resume
    clash = settings_that_differ(manifest, requested)
    if clash:
        raise SpectralError(f"--resume keeps the stored settings; these differ: {clash}")
    if manifest["status"] == "complete":
        return {"done": f"{out}: already complete ({manifest['n_steps']} steps); nothing to resume"}
    plan = PrivacyPlan(**{k: v for k, v in manifest["dp"].items() if k not in ("sample_rate", "steps_per_epoch")})
    return {"cfg": CollectConfig.from_dict(manifest["config"]), "plan": plan, "resumed": True}


def collect(
    cfg: CollectConfig | None,
    out,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device="auto",
    requested: dict | None = None,
    stop_after: int | None = None,
) -> Path:
    """Run (or continue) DP fine-tuning and log every step's gradient to a store at ``out``.

    resume : continue the store in ``out`` with its stored settings (``cfg`` is ignored and may be
        None); ``requested`` settings (e.g. those given on the command line) must equal the stored ones
    device : where to train (``auto``: CUDA when available); the stored rows are the same either way.
    stop_after : commit and stop after this many steps (status ``stopped``; ``--resume`` continues), e.g. the
        first 250 steps of a 1000-step recipe, whose learning-rate schedule and noise stay the 1000-step run's
    Under ``torchrun`` each process is one rank of a data-parallel job (:mod:`spectral.dp.distributed`):
    rank 0 writes the store; a job can be resumed with any number of ranks.
    Returns the store path; open it with :func:`spectral.store.open`.
    """
    out = Path(out)
    group, device = join(resolve_device(device))  # a missing GPU is an error before anything is loaded
    try:
        return _collect(
            cfg, out, resume, overwrite, progress and group.is_writer, device, group, requested or {}, stop_after
        )
    finally:
        leave()


def shared_settings(cfg, out, resume, overwrite, requested, group) -> dict:
    """Rank 0 decides what runs (:func:`run_settings`: fresh, resumed or already done); every rank gets
    its decision, or stops with rank 0's error instead of waiting for it."""
    settings = None
    if group.is_writer:
        try:
            settings = run_settings(cfg, out, resume, overwrite, requested)
        except SpectralError as exc:
            share({"error": str(exc)}, group)  # the other ranks stop too instead of waiting
            raise
    settings = share(settings, group)
    if "error" in settings:
        raise SpectralError(f"rank {group.rank}: rank 0 stopped: {settings['error']}")
    return settings


def commit(writer, engine, ledger, status="running") -> None:
    """A consistent point to resume from: the engine's state and the accountant's beside the rows."""
    writer.commit(engine.state(), {"accountant": ledger.state(), "epsilon": ledger.epsilon()}, status=status)


def log_step(writer, ledger, t, engine, host_rows, step: int, lr: float, res, seconds: float, end: int) -> dict:
    """Store one step's rows and record (rank 0): evaluation when due, a commit every ``checkpoint_every``
    steps and at ``end``. Returns the step's record."""
    cfg = t.cfg
    ledger.record_step(step)
    last = step + 1 == cfg.steps
    committing = (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end
    # RDP every step (cached); PRV (up to a second) at commits and the last step only
    record = step_record(res, lr, ledger.epsilon(exact=committing), seconds)
    rows, ready = host_rows({s: res.row(s) for s in cfg.stored_streams})
    writer.append(step, rows, record, ready)
    if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
        writer.log("eval", {"step": step, **engine.evaluate(t.dev_chunks)})
    if committing:
        commit(writer, engine, ledger, status="complete" if last else "running")
    return record


def start_writing(t, out, resumed: bool, device, group):
    """``(writer, ledger, first step)``: rank 0 opens the store (new or resumed) and logs the launch; the
    other ranks get no writer and continue from rank 0's state (weights, moments, noise generator)."""
    writer = ledger = None
    start = 0
    if group.is_writer:
        writer, ledger, start = open_writer(t, out, resumed=resumed)
        writer.log("launches", {"step": start, "world_size": group.world_size, "device": device.type})
        print(f"collect: {t.describe()} -> {out}" + (f" on {group.world_size} ranks" if group.world_size > 1 else ""))
    if group.world_size > 1:
        state, start = share((t.engine.state(), start) if group.is_writer else None, group)
        if not group.is_writer:
            t.engine.load_state(state)
    return writer, ledger, start


def _collect(cfg, out, resume, overwrite, progress, device, group, requested, stop_after=None) -> Path:
    settings = shared_settings(cfg, out, resume, overwrite, requested, group)
    if "done" in settings:
        if group.is_writer:
            print(settings["done"])
        return out
    cfg = settings["cfg"]
    torch.manual_seed(cfg.seed)  # dropout draws from torch's global generator: seeded by the loop that trains
    t = prepare(cfg.validate(), plan=settings["plan"], device=device, group=group)
    engine = t.engine
    writer, ledger, start = start_writing(t, out, settings["resumed"], device, group)
    host_rows = HostRows(t.device, cfg.stored_streams, t.d, slots=8)

    def stop(status, message):
        if writer is not None:
            if status == "stopped":
                commit(writer, engine, ledger, status)
            writer.close(status=status)
        return SpectralError(message)

    if writer is not None and cfg.eval_every and start == 0:  # the starting point, before any update (step -1)
        writer.log("eval", {"step": -1, **engine.evaluate(t.dev_chunks)})
    end = cfg.steps if stop_after is None else min(cfg.steps, max(stop_after, start))
    bar = tqdm(total=end, initial=start, desc="collect", unit="step", disable=not progress)
    try:
        for step, lr, res, seconds in t.steps(engine, start, end):
            peak = res.stats["peak"]
            if storage_overflow([peak], cfg.dtype) is not None:  # checked here: the host copy is asynchronous
                raise stop(
                    "stopped",
                    f"step {step}: a gradient value {peak:.4g} exceeds what {cfg.dtype} storage holds; "
                    f"the {step} completed steps are stored in {out}; use --dtype float32",
                )
            if writer is None:
                continue
            record = log_step(writer, ledger, t, engine, host_rows, step, lr, res, seconds, end)
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.3f}", eps=f"{record['epsilon']:.2f}")
    except NonFiniteGradient as exc:  # the same on every rank: the gradients are all-reduced
        raise stop("stopped", f"step {exc.step}: {exc}; the {exc.step} completed steps are stored in {out}") from None
    except KeyboardInterrupt as exc:
        # the step in flight may be half-applied: keep the last commit, which is consistent
        why = f" {exc.args[0]}" if exc.args else ""
        raise stop(
            "interrupted", f"interrupted{why}; {out} keeps every step up to its last commit; continue with --resume"
        ) from None
    except dist.DistError as exc:  # another rank died (or the network did) in a collective
        raise stop(
            "interrupted",
            f"rank {group.rank}: the job lost a rank ({str(exc).splitlines()[0][:200]}); {out} keeps every step up "
            "to its last commit; continue with --resume (with any number of ranks)",
        ) from None
    finally:
        bar.close()
    if writer is not None:
        writer.close(status=None if end == cfg.steps else "stopped")
        if end < cfg.steps:
            print(f"stopped after {end} of {cfg.steps} steps as asked; continue with --resume")
    return out
